"""Pretrained torchvision models by name, as pure code: the model list, each model's
pretrained architecture, weight names, the weights' own transforms, a cached checkpoint
used without downloading, and a weights file that cannot be fetched said in one line.

Nothing can be downloaded here: each test places a checkpoint in a temporary
$TORCH_HOME/hub/checkpoints (support/pretrained_cache.py). torchvision loads such a
cached file without downloading, and so does the engine. (In real jobs:
tests/integration/test_pretrained.py.)
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from hybrid_infer.errors import ModelError
from hybrid_infer.models import TORCHVISION_MODELS, ModelSpec, model_spec
from hybrid_infer.models.torchvision_spec import preprocess_of, pretrained_weights

from pretrained_cache import MODEL, place_checkpoint, torch_home  # noqa: F401 (a fixture)


def test_the_model_list_is_torchvisions():
    import torchvision

    assert TORCHVISION_MODELS == tuple(torchvision.models.list_models(module=torchvision.models))


def test_every_torchvision_model_builds_by_name_with_its_pretrained_architecture():
    """Each classification model, with random weights and with the architecture of its
    DEFAULT weights (built on the meta device, as actors do before taking the object
    store's weights), gives one score per category."""
    import torch

    for name in TORCHVISION_MODELS:
        assert ModelSpec(name, weights="random").build_module(on_meta=True) is not None, name
        entry = pretrained_weights(name, "DEFAULT")
        spec = ModelSpec(name, weights="unused", pretrained=f"{type(entry).__name__}."
                         f"{entry.name}", num_classes=len(entry.meta["categories"]))
        module = spec.build_module(on_meta=True).eval().to("meta")  # regnets: built on CPU
        crop = preprocess_of(entry).crop
        with torch.no_grad():
            out = module(torch.empty(1, 3, crop, crop, device="meta"))
        assert tuple(out.shape) == (1, len(entry.meta["categories"])), name


def test_weight_names_resolve_to_torchvisions_entries():
    assert str(pretrained_weights("resnet50", "DEFAULT")) == "ResNet50_Weights.IMAGENET1K_V2"
    assert str(pretrained_weights("resnet50", "IMAGENET1K_V1")) == "ResNet50_Weights.IMAGENET1K_V1"
    assert str(pretrained_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V2")) == \
        "ResNet50_Weights.IMAGENET1K_V2"
    with pytest.raises(ModelError, match="not resnet50's: use one of DEFAULT, IMAGENET1K_V1"):
        pretrained_weights("resnet50", "ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(ModelError, match="has no weights 'NOPE'"):
        pretrained_weights("resnet50", "NOPE")


def test_preprocessing_is_the_weights_own_transform():
    from PIL import Image

    from hybrid_infer.decode import ImageDecoder

    v2 = preprocess_of(pretrained_weights("resnet50", "IMAGENET1K_V2"))
    assert (v2.resize, v2.crop, v2.interpolation) == (232, 224, "bilinear")
    swag = pretrained_weights("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")
    assert (preprocess_of(swag).resize, preprocess_of(swag).interpolation) == (384, "bicubic")
    pixels = np.random.default_rng(0).integers(0, 255, (300, 410, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    for entry in (pretrained_weights("resnet50", "IMAGENET1K_V2"), swag):
        ours = ImageDecoder(preprocess_of(entry))(buffer.getvalue())
        theirs = entry.transforms()(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5, rtol=0)


def test_a_cached_checkpoint_is_used_without_downloading(torch_home):
    path = place_checkpoint(MODEL)
    spec = model_spec(MODEL)  # no weights: DEFAULT (the conftest refuses any download)
    assert spec.pretrained == "ResNet18_Weights.IMAGENET1K_V1"
    assert spec.weights == path and path.startswith(str(torch_home))
    assert spec.class_names[:2] == ("tench", "goldfish") and len(spec.class_names) == 1000
    assert (spec.preprocess.resize, spec.preprocess.crop) == (256, 224)
    assert model_spec(MODEL, weights="IMAGENET1K_V1") == spec


def test_weights_that_cannot_be_fetched_say_what_to_pass_in_one_line(torch_home, tmp_path):
    with pytest.raises(ModelError) as raised:
        ModelSpec("resnet50")
    message = str(raised.value)
    assert "\n" not in message
    assert "could not fetch resnet50's pretrained weights ResNet50_Weights.IMAGENET1K_V2" \
        in message and "--weights FILE" in message and "--weights random" in message
    # the command line: one line on stderr; a closed local proxy makes the download
    # fail at once, wherever the tests run
    env = {**os.environ, "TORCH_HOME": str(torch_home), "HTTPS_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9"}
    images = tmp_path / "in"
    images.mkdir()
    done = subprocess.run([sys.executable, "-m", "hybrid_infer.cli", "run", "--input",
                           str(images), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr[-2000:]
    assert "--weights FILE" in lines[0] and "--weights random" in lines[0]
