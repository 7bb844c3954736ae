"""Pretrained torchvision models by name: weights fetched once on the driver through
torch's hub cache, their categories as labels, their transforms as preprocessing, the
file's digest in the pool key.

Nothing can be downloaded here: each test places a checkpoint in a temporary
$TORCH_HOME/hub/checkpoints under the file name torchvision expects (the last part of
the weights' URL). torchvision loads such a cached file without downloading, and so
does the engine.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from predictions import local_path
from hybrid_infer.errors import ModelError
from hybrid_infer.models import (TORCHVISION_MODELS, ModelSpec, RandomWeightsWarning,
                                 model_spec)
from hybrid_infer.models.torchvision_spec import (cached_weights_path, preprocess_of,
                                                  pretrained_weights)

MODEL = "resnet18"


def place_checkpoint(name: str, weights: str = "DEFAULT", seed: int = 0, **builder_kwargs):
    """A seeded state_dict saved where torch's hub cache keeps `weights` of `name`."""
    import torch
    import torchvision

    entry = pretrained_weights(name, weights)
    torch.manual_seed(seed)
    module = torchvision.models.get_model_builder(name)(
        weights=None, num_classes=len(entry.meta["categories"]), **builder_kwargs)
    path = cached_weights_path(entry)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(module.state_dict(), path)
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


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


def test_random_weights_warn_on_every_job(spark, image_dir):
    from hybrid_infer import infer
    from hybrid_infer.sources import read_images

    df = read_images(spark, image_dir).limit(1)
    with pytest.warns(RandomWeightsWarning) as caught:
        for _ in range(2):
            infer(df, "mobilenet_v3_small", weights="random", mode="udf")
    assert len([w for w in caught if w.category is RandomWeightsWarning]) == 2
    assert "random weights" in str(caught[0].message)


def test_pretrained_job_end_to_end(torch_home, spark, image_dir, ray_address,
                                   stop_new_pools):
    """infer(df, "resnet18", top_k=3) with no weights: torchvision's DEFAULT from the
    cache, on the pool; every row equals torchvision's own model and transforms, labels
    come from the weights' categories, and the file's digest is in the pool key."""
    import shutil

    import torch
    import torchvision
    from PIL import Image

    from hybrid_infer import infer
    from hybrid_infer.pool.registry import Pool
    from hybrid_infer.pool.settings import PoolSettings
    from hybrid_infer.sources import read_images
    from hybrid_infer.weights import weights_digest

    path = place_checkpoint(MODEL, seed=3)
    entry = torchvision.models.ResNet18_Weights.DEFAULT
    settings = PoolSettings(num_actors=1, batch_size=4, torch_threads=1)
    df = read_images(spark, image_dir).limit(6)
    rows = infer(df, MODEL, top_k=3, pool=settings, ray_address=ray_address).collect()

    # what a torchvision user gets: the builder's own load of the cached file, the
    # weights' own transforms
    reference = torchvision.models.resnet18(weights=entry).eval()
    transform = entry.transforms()
    assert len(rows) == 6
    for row in rows:
        assert row["error"] is None, row["error"]
        image = Image.open(local_path(row["path"])).convert("RGB")
        with torch.no_grad():
            want = reference(transform(image)[None])[0].numpy()
        np.testing.assert_allclose(row["prediction"], want, atol=1e-4, rtol=0)
        top = np.argsort(-want)[:3]
        assert list(row["top_k"]["indices"]) == list(top)
        assert list(row["top_k"]["labels"]) == [entry.meta["categories"][i] for i in top]

    spec = model_spec(MODEL)
    pool = Pool.get_or_create(spec, settings)
    status = pool.status()
    first_digest = weights_digest(spec)
    assert status["weights_digest"] == first_digest
    assert status["model"].endswith("ResNet18_Weights.IMAGENET1K_V1")

    # the actors never read the file: with it gone, a new actor builds from the object
    # store's copy (only the driver needs it, to name the pool)
    shutil.move(path, path + ".away")
    try:
        assert len(pool.scale(2)) == 2
    finally:
        shutil.move(path + ".away", path)
    rows = infer(df, MODEL, top_k=3, pool=settings, ray_address=ray_address).collect()
    assert len(rows) == 6 and all(row["error"] is None for row in rows)
    assert len(pool.status()["actors"]) == 2

    # another file under the same name: another digest, another pool
    place_checkpoint(MODEL, seed=4)
    other = model_spec(MODEL)
    assert weights_digest(other) != first_digest
    assert Pool.get_or_create(other, settings).name != pool.name
