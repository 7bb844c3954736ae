"""Outputs: top-k with class names, embeddings from a named layer, configurable
preprocessing, and non-image (numeric array) inputs that skip decoding."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hybrid_infer import PoolSettings, Preprocess, infer
from hybrid_infer.errors import ModelError
from hybrid_infer.models import FactorySpec

from predictions import local_path

CLASSES = tuple(f"class-{i}" for i in range(10))
SPEC = FactorySpec("torchvision.models:resnet18", kwargs={"num_classes": 10}, seed=5,
                   class_names=CLASSES)
# Not the ImageNet defaults: proves the preprocessing is the caller's.
PREPROCESS = Preprocess(resize=48, crop=40, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
POOL = PoolSettings(num_actors=1, batch_size=8, torch_threads=1, num_cpus_per_actor=0.5)


pytestmark = pytest.mark.usefixtures("stop_new_pools")


@pytest.fixture(scope="module")
def module():
    return SPEC.load_module()


@pytest.fixture(scope="module")
def decoded(image_dir):
    import torch

    from hybrid_infer.decode import ImageDecoder

    decoder = ImageDecoder(PREPROCESS)
    paths = sorted(os.path.join(image_dir, name) for name in os.listdir(image_dir))
    return paths, torch.stack([decoder(open(p, "rb").read()) for p in paths])


def by_path(rows, column="prediction"):
    return {local_path(row["path"]): row[column] for row in rows}


@pytest.mark.parametrize("mode", ["hybrid", "udf"])
def test_top_k_carries_class_names(images_df, module, decoded, ray_address, mode):
    import torch

    paths, inputs = decoded
    with torch.no_grad():
        logits = dict(zip(paths, module(inputs).numpy()))
    rows = infer(images_df, SPEC, mode=mode, top_k=3, preprocess=PREPROCESS, pool=POOL,
                 ray_address=ray_address).collect()
    assert len(rows) == len(paths)
    for path, top in by_path(rows, "top_k").items():
        want = np.argsort(-logits[path], kind="stable")[:3]
        assert top["indices"] == list(want)
        assert top["labels"] == [CLASSES[i] for i in want]


@pytest.mark.parametrize("mode", ["hybrid", "udf"])
def test_embeddings_from_a_named_layer(images_df, module, decoded, ray_address, mode):
    import torch

    paths, inputs = decoded
    kept = {}
    hook = module.avgpool.register_forward_hook(lambda m, i, out: kept.update(out=out))
    with torch.no_grad():
        module(inputs)
    hook.remove()
    expected = dict(zip(paths, kept["out"].flatten(1).numpy()))
    # two streams: each keeps its own tapped layer output
    settings = PoolSettings(**{**POOL.__dict__, "embedding_layer": "avgpool", "streams": 2,
                               "torch_threads": 2})
    rows = infer(images_df, SPEC, mode=mode, preprocess=PREPROCESS, pool=settings,
                 ray_address=ray_address).collect()
    got = by_path(rows)
    assert sorted(got) == sorted(expected)
    for path, embedding in got.items():
        assert len(embedding) == 512
        np.testing.assert_allclose(embedding, expected[path], atol=1e-4, rtol=0)


def test_unknown_layer_is_a_model_error(module):
    from hybrid_infer.actor.runner import ModelRunner

    with pytest.raises(ModelError, match="no layer 'avgpol'"):
        ModelRunner(module, device="cpu", embedding_layer="avgpol")


@pytest.mark.parametrize("mode", ["hybrid", "udf"])
def test_numeric_arrays_pass_through_without_decoding(spark, module, ray_address, mode):
    import torch

    rng = np.random.default_rng(0)
    tensors = rng.normal(size=(10, 3, 32, 32)).astype(np.float32)
    rows = [(i, tensors[i].reshape(-1).tolist()) for i in range(10)]
    rows.append((10, [1.0, 2.0]))  # the wrong size: an error row, not a failed job
    df = spark.createDataFrame(rows, "id int, features array<float>")
    out = infer(df, SPEC, mode=mode, input_col="features", input_shape=(3, 32, 32),
                pool=POOL, ray_address=ray_address).collect()
    with torch.no_grad():
        want = module(torch.from_numpy(tensors)).numpy()
    got = {row["id"]: row for row in out}
    assert sorted(got) == list(range(11))
    for i in range(10):
        assert got[i]["error"] is None
        np.testing.assert_allclose(got[i]["prediction"], want[i], atol=1e-4, rtol=0)
    assert got[10]["prediction"] is None and "cannot be reshaped" in got[10]["error"]
