"""Two ways a model source yields a module, shared by the concrete sources.

`CodeDefinedModel`: the architecture is code (torchvision, a factory) and the weights
come separately: "random" (seeded) or a state_dict file. `FileDefinedModel`: one file
or directory holds structure and weights (TorchScript, torch.export, MLflow).
"""

from __future__ import annotations

import contextlib
import threading
import warnings

from hybrid_infer.servable import Servable

RANDOM_WEIGHTS = "random"


class RandomWeightsWarning(UserWarning):
    """A job runs a model with random (untrained) weights: its predictions are noise."""


# Said on every job, not once per process: a job on random weights is worth noticing.
warnings.simplefilter("always", RandomWeightsWarning)


def warn_if_random(spec, stacklevel: int = 3) -> None:
    """Warn (every time) when `spec` has random weights."""
    if getattr(spec, "weights", None) == RANDOM_WEIGHTS:
        name = getattr(spec, "name", None) or getattr(spec, "identity", "the model")
        warnings.warn(f"{name} runs with random weights (seed {getattr(spec, 'seed', 0)}): "
                      "its predictions are noise; pass pretrained weights ('DEFAULT' for a "
                      "torchvision name) or a state_dict file", RandomWeightsWarning,
                      stacklevel=stacklevel)


class ImageModel(Servable):
    """What every model source serves to a pool (the Servable contract): its weights
    as arrays, built off the driver, served by InferenceActor; image bytes (or numeric
    arrays with input_shape) in, the output contract's columns out."""

    payload_off_driver = True

    def payload_digest(self) -> str:
        from hybrid_infer.weights import weights_digest

        return weights_digest(self)

    def build_payload(self) -> dict:
        from hybrid_infer.weights import state_dict_to_arrays

        return state_dict_to_arrays(self.load_state_dict())

    def actor_class(self) -> type:
        from hybrid_infer.actor.inference import InferenceActor

        return InferenceActor


class CodeDefinedModel(ImageModel):
    """Needs `_construct()` and the fields `weights`, `seed`, `allow_pickle`."""

    def _construct(self):
        raise NotImplementedError

    def build_module(self, *, on_meta: bool = False):
        """A fresh module with this architecture; on_meta skips allocating weights."""
        import torch

        if on_meta:
            try:
                with torch.device("meta"):
                    return self._construct()
            except NotImplementedError:
                # A builder that computes with tensors while building (torchvision's
                # regnets) cannot run on meta: build on the CPU, uninitialised; the
                # caller's load_state_dict(assign=True) then replaces those weights.
                with _initialisers_disabled():
                    return self._construct()
        return self._construct()

    def load_state_dict(self) -> dict:
        """The weights as a state_dict of CPU tensors."""
        import torch

        from hybrid_infer.models.checkpoint import load_checkpoint

        if self.weights == RANDOM_WEIGHTS:
            torch.manual_seed(self.seed)
            return self.build_module().state_dict()
        return load_checkpoint(self.weights, allow_pickle=self.allow_pickle)

    def load_module(self):
        """The module with its weights, in eval mode (what a direct PyTorch user runs)."""
        module = self.build_module(on_meta=True)
        module.load_state_dict(self.load_state_dict(), assign=True)
        return module.eval()


class FileDefinedModel(ImageModel):
    """Needs `_load()`, returning the whole module from the file."""

    def _load(self):
        raise NotImplementedError

    def build_module(self, *, on_meta: bool = False):
        # The file is the structure: there is no weightless build. The caller's
        # load_state_dict(assign=True) then swaps in the object store's copy.
        return self._load()

    def load_state_dict(self) -> dict:
        return {name: tensor.detach() for name, tensor in self._load().state_dict().items()}

    def load_module(self):
        return self._load().eval()


_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _initialisers_disabled():
    """torch.nn.init's in-place initialisers leave tensors as they are within the block."""
    from torch.nn import init

    names = [name for name in dir(init)
             if name.endswith("_") and not name.startswith("_") and callable(getattr(init, name))]
    with _INIT_LOCK:
        originals = {name: getattr(init, name) for name in names}
        try:
            for name in names:
                setattr(init, name, lambda tensor, *args, **kwargs: tensor)
            yield
        finally:
            for name, original in originals.items():
                setattr(init, name, original)
