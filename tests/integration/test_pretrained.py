"""Pretrained torchvision models by name in real jobs: their categories as labels, their
transforms as preprocessing, the file's digest in the pool key; random weights warn on
every job. (Names, weights and the hub cache as pure code:
tests/unit/test_pretrained_weights.py.)

Nothing can be downloaded here: each test places a checkpoint in a temporary
$TORCH_HOME/hub/checkpoints under the file name torchvision expects (the last part of
the weights' URL). torchvision loads such a cached file without downloading, and so
does the engine.
"""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_infer.models import RandomWeightsWarning, model_spec

from predictions import local_path
from pretrained_cache import MODEL, place_checkpoint, torch_home  # noqa: F401 (a fixture)


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
