"""A torchvision classification model by name, with its pretrained weights (torchvision's
weight names, fetched once on the driver into torch's hub cache), a state_dict file, or
random (seeded) weights."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass

from hybrid_infer.decode import Preprocess
from hybrid_infer.errors import ModelError
from hybrid_infer.models.base import RANDOM_WEIGHTS, CodeDefinedModel

#: torchvision.models.list_models(module=torchvision.models) for the pinned torchvision
#: (a test checks they still agree). A name outside it is looked up in the installed
#: torchvision, so a newer one's models work too; the driver imports torch only then, or
#: for pretrained weights.
TORCHVISION_MODELS = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny",
    "densenet121", "densenet161", "densenet169", "densenet201", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_l",
    "efficientnet_v2_m", "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t",
    "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "mobilenet_v2",
    "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_16gf", "regnet_x_1_6gf",
    "regnet_x_32gf", "regnet_x_3_2gf", "regnet_x_400mf", "regnet_x_800mf", "regnet_x_8gf",
    "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf", "regnet_y_32gf", "regnet_y_3_2gf",
    "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf", "resnet101", "resnet152", "resnet18",
    "resnet34", "resnet50", "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "squeezenet1_0", "squeezenet1_1", "swin_b", "swin_s", "swin_t", "swin_v2_b", "swin_v2_s",
    "swin_v2_t", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
    "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32",
    "wide_resnet101_2", "wide_resnet50_2",
)

#: The weights a named model gets when none are given: torchvision's DEFAULT.
DEFAULT_WEIGHTS = "DEFAULT"

_WEIGHT_NAME = re.compile(r"^(?:\w+_Weights\.)?[A-Z][A-Z0-9_]*$")


def is_torchvision_model(name: str) -> bool:
    """A classification model of torchvision.models (list_models), by name."""
    if name in TORCHVISION_MODELS:
        return True
    if not name.isidentifier():
        return False
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


@dataclass(frozen=True)
class ModelSpec(CodeDefinedModel):
    """A torchvision classification model plus where its weights come from.

    weights:
    - None or "DEFAULT": torchvision's default pretrained weights for `name`;
    - a torchvision weight name, "IMAGENET1K_V2" or "ResNet50_Weights.IMAGENET1K_V2":
      those weights. They are fetched once, here on the driver, through torch's hub
      download and cache ($TORCH_HOME/hub/checkpoints; a cached file is never fetched
      again), read without pickle, and travel to the actors through the object store.
      Their categories become `class_names` and their transforms `preprocess`, unless
      given;
    - the path of a local state_dict (.pt/.pth saved with torch.save, or .safetensors),
      loaded with ``weights_only=True`` (``allow_pickle=True`` lifts that for trusted
      files only: it can run arbitrary code);
    - "random": initialised from `seed` (tests and offline demos; predictions are noise).
    """

    name: str
    weights: str | None = None
    seed: int = 0
    num_classes: int | None = None
    allow_pickle: bool = False
    #: One name per output class, for top-k results (None: indices only).
    class_names: tuple | None = None
    #: The decode transform this model expects (None: the engine's default).
    preprocess: Preprocess | None = None
    #: Resolved pretrained weights, e.g. "ResNet50_Weights.IMAGENET1K_V2" (set here).
    pretrained: str | None = None

    def __post_init__(self):
        if not is_torchvision_model(self.name):
            raise ModelError(
                f"unknown model {self.name!r}: use a torchvision classification model "
                f"(torchvision.models.list_models(module=torchvision.models), e.g. "
                f"{', '.join(TORCHVISION_MODELS[:4])}, resnet18, resnet50, vit_b_16)")
        weights = DEFAULT_WEIGHTS if self.weights is None else self.weights
        if self.pretrained or weights == RANDOM_WEIGHTS or os.path.isfile(weights):
            if self.num_classes is None:
                object.__setattr__(self, "num_classes", 1000)
            return
        if not _WEIGHT_NAME.match(weights):
            raise ModelError(
                f"weights file {weights!r} does not exist: pass the path of a saved "
                f"state_dict (.pt, .pth or .safetensors), a torchvision weight name "
                f"({DEFAULT_WEIGHTS!r}, 'IMAGENET1K_V1', ...) or {RANDOM_WEIGHTS!r}")
        self._resolve_pretrained(weights)

    def _resolve_pretrained(self, weights: str) -> None:
        entry = pretrained_weights(self.name, weights)
        categories = entry.meta.get("categories")
        if self.num_classes not in (None, len(categories or ())):
            raise ModelError(f"{entry} has {len(categories)} classes, not num_classes="
                             f"{self.num_classes}: pass a state_dict file for another head")
        set_field = object.__setattr__
        set_field(self, "pretrained", f"{type(entry).__name__}.{entry.name}")
        set_field(self, "weights", fetch_weights(self.name, entry))
        set_field(self, "num_classes", len(categories or ()) or 1000)
        if self.class_names is None and categories:
            set_field(self, "class_names", tuple(categories))
        if self.preprocess is None:
            set_field(self, "preprocess", preprocess_of(entry))

    @property
    def identity(self) -> str:
        """What the architecture is, independent of the weight values."""
        suffix = f":{self.pretrained}" if self.pretrained else ""
        return f"torchvision:{self.name}:{self.num_classes}{suffix}"

    def _builder(self):
        import torchvision

        return torchvision.models.get_model_builder(self.name)

    def _construct(self):
        if not self.pretrained:
            return self._builder()(weights=None, num_classes=self.num_classes)
        # torchvision's builder sets the architecture these weights need (num_classes,
        # transform_input, image_size, ...) and adjusts the module after loading (e.g.
        # inception drops its aux head); run it, loading nothing: the weights come later.
        with _builder_loads(None):
            return self._builder()(weights=self.pretrained, progress=False)

    def load_state_dict(self) -> dict:
        if not self.pretrained:
            return super().load_state_dict()
        from hybrid_infer.models.checkpoint import load_checkpoint

        # The cached file, read without pickle, through the builder (which renames old
        # keys, e.g. densenet's): the state_dict of the module torchvision would return.
        state_dict = load_checkpoint(self.weights, allow_pickle=self.allow_pickle)
        with _builder_loads(state_dict):
            module = self._builder()(weights=self.pretrained, progress=False)
        return {name: tensor.detach() for name, tensor in module.state_dict().items()}


def pretrained_weights(name: str, weights: str):
    """torchvision's weights entry for `name`: "DEFAULT", "IMAGENET1K_V2" or
    "ResNet50_Weights.IMAGENET1K_V2"."""
    import torchvision

    choices = torchvision.models.get_model_weights(name)
    entry_name = weights.rsplit(".", 1)[-1]
    if "." in weights and weights.split(".", 1)[0] != choices.__name__:
        raise ModelError(f"weights {weights!r} are not {name}'s: use one of "
                         f"{_weight_names(choices)}")
    try:
        return choices[entry_name] if entry_name != DEFAULT_WEIGHTS else choices.DEFAULT
    except (KeyError, AttributeError):
        raise ModelError(f"{name} has no weights {weights!r}: use one of "
                         f"{_weight_names(choices)}, a state_dict file or "
                         f"{RANDOM_WEIGHTS!r}") from None


def _weight_names(choices) -> str:
    return ", ".join([DEFAULT_WEIGHTS] + [entry.name for entry in choices])


def cached_weights_path(entry) -> str:
    """Where torch's hub cache keeps these weights ($TORCH_HOME/hub/checkpoints/<file>):
    the file name is the last part of the weights' URL, as torch.hub names it."""
    import urllib.parse

    import torch

    filename = os.path.basename(urllib.parse.urlparse(entry.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def fetch_weights(name: str, entry) -> str:
    """The local file of `entry`: torch's hub cache, downloading it there once if absent
    (with torch.hub's own download and hash check). Runs on the driver only."""
    path = cached_weights_path(entry)
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    match = re.search(r"-([a-f0-9]*)\.", os.path.basename(path))  # torch.hub's HASH_REGEX
    try:
        _download(entry.url, path, match.group(1) if match else None)
    except Exception as exc:  # no network, a proxy, a bad hash: one line says what to do
        reason = str(getattr(exc, "reason", None) or exc).splitlines()[0][:200]
        raise ModelError(
            f"could not fetch {name}'s pretrained weights {type(entry).__name__}.{entry.name} "
            f"from {entry.url} ({reason}): copy that file to {path}, or pass --weights FILE "
            f"(weights=FILE: a saved state_dict) or --weights random (untrained)") from None
    return path


def _download(url: str, path: str, hash_prefix: str | None) -> None:
    import torch

    torch.hub.download_url_to_file(url, path, hash_prefix, progress=False)


def preprocess_of(entry) -> Preprocess:
    """The weights' own transforms (torchvision's ImageClassification) as a Preprocess."""
    transform = entry.transforms()
    size = getattr(transform, "resize_size", None)
    crop = getattr(transform, "crop_size", None)
    if size is None or crop is None:
        return Preprocess()
    interpolation = getattr(transform, "interpolation", None)
    return Preprocess(resize=int(size[0]), crop=int(crop[0]),
                      mean=tuple(float(m) for m in transform.mean),
                      std=tuple(float(s) for s in transform.std),
                      interpolation=getattr(interpolation, "value", "bilinear"))


_BUILD_LOCK = threading.Lock()


@contextlib.contextmanager
def _builder_loads(state_dict: dict | None):
    """Within the block, torchvision's weights load `state_dict` instead of reading (or
    downloading) their file; with None, builders load nothing (a weightless build)."""
    import torch
    from torch.nn.modules.module import _IncompatibleKeys
    from torchvision.models._api import WeightsEnum

    def get_state_dict(self, *args, **kwargs):
        return {} if state_dict is None else state_dict

    def load_nothing(self, state_dict, strict=True, assign=False):
        return _IncompatibleKeys([], [])

    patches = [(WeightsEnum, "get_state_dict", get_state_dict)]
    if state_dict is None:
        patches.append((torch.nn.Module, "load_state_dict", load_nothing))
    with _BUILD_LOCK:
        originals = [(owner, attr, owner.__dict__[attr]) for owner, attr, _ in patches]
        try:
            for owner, attr, replacement in patches:
                setattr(owner, attr, replacement)
            yield
        finally:
            for owner, attr, original in originals:
                setattr(owner, attr, original)
