"""The pool's one-time model optimisation (PoolSettings.optimize)."""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np
import pytest

from hybrid_infer import infer
from hybrid_infer.decode import ImageDecoder
from hybrid_infer.errors import ConfigurationError
from hybrid_infer.models import ModelSpec
from hybrid_infer.pool.registry import Pool
from hybrid_infer.actor.runner import ModelRunner
from hybrid_infer.pool.settings import PoolKey, PoolSettings
from hybrid_infer.weights import module_from_arrays, state_dict_to_arrays, weights_digest

from predictions import TEST_BATCH, TEST_MODEL, assert_matches


def _key(settings: PoolSettings) -> PoolKey:
    spec = ModelSpec(TEST_MODEL, weights="random")
    return PoolKey(spec.identity, weights_digest(spec), asdict(settings.actor))


def test_optimize_is_part_of_the_pool_key():
    eager = _key(PoolSettings())
    frozen = _key(PoolSettings(optimize="freeze"))
    compiled = _key(PoolSettings(optimize="compile"))
    assert len({eager.name, frozen.name, compiled.name}) == 3
    assert frozen.name == _key(PoolSettings(optimize="freeze")).name


def test_unknown_or_unsupported_optimisation_is_refused():
    with pytest.raises(ConfigurationError, match="optimize must be one of"):
        PoolSettings(optimize="fastest")
    with pytest.raises(ConfigurationError, match="fp32 only"):
        PoolSettings(optimize="freeze", precision="bf16")


def test_frozen_model_predicts_like_the_eager_one(image_dir):
    # Built like an actor builds it: around read-only object-store-style arrays.
    spec = ModelSpec(TEST_MODEL, weights="random")
    arrays = state_dict_to_arrays(spec.load_state_dict())
    decoder = ImageDecoder()
    names = sorted(os.listdir(image_dir))[:5]  # 5: not the example batch size
    tensors = [decoder(open(os.path.join(image_dir, n), "rb").read()) for n in names]
    eager = ModelRunner(module_from_arrays(spec, arrays))
    frozen = ModelRunner(module_from_arrays(spec, arrays), optimize="freeze",
                         example_shape=(4, 3, 224, 224))
    assert frozen.optimize_seconds > 0
    assert not isinstance(frozen.module, type(eager.module))  # really a different graph
    expected = eager(tensors)
    np.testing.assert_allclose(frozen(tensors), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(frozen(tensors[:1]), expected[:1], atol=1e-4, rtol=0)


def test_hybrid_on_a_frozen_pool_equals_direct_pytorch(images_df, expected, ray_address):
    settings = PoolSettings(num_actors=1, batch_size=TEST_BATCH, torch_threads=1,
                            optimize="freeze")
    pool = Pool.get_or_create(ModelSpec(TEST_MODEL, weights="random"), settings)
    try:
        out = infer(images_df, TEST_MODEL, weights="random", mode="hybrid", pool=settings,
                    ray_address=ray_address)
        assert_matches(out.collect(), expected)
        status = pool.status()
        assert status["settings"]["optimize"] == "freeze"
        assert status["model_loads"] == 1
        actor = status["actors"][0]
        assert actor["optimize"] == "freeze" and actor["optimize_seconds"] > 0
    finally:
        pool.stop()
