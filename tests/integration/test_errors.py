"""Engine errors raised in Spark tasks come back to the driver as the engine's own types.

Real Spark jobs raise them here; how the text of a failed job is read is tested on its
own in tests/unit/test_error_types.py.
"""

from __future__ import annotations

import pytest

from hybrid_infer.errors import (
    ConfigurationError,
    HybridInferError,
    PoolError,
    PoolTimeoutError,
    engine_errors,
)

from predictions import TEST_MODEL

def failing_job(spark, error: Exception):
    """A one-task Spark job whose task raises `error`."""

    def fail(batches):
        for _ in batches:
            raise error
        yield from ()

    return spark.range(4, numPartitions=1).mapInArrow(fail, "id long")


def test_a_task_raising_an_engine_error_reaches_the_driver_typed(spark):
    df = failing_job(spark, PoolError("pool 'p' was stopped: start it again"))
    with pytest.raises(PoolError, match=r"^pool 'p' was stopped: start it again$") as caught:
        with engine_errors():
            df.collect()
    assert not isinstance(caught.value.__cause__, HybridInferError)  # Spark's, as the cause


def test_the_pool_timeout_in_a_task_is_the_pool_timeout(spark):
    df = failing_job(spark, PoolTimeoutError("a batch got no answer in 0.1 s (batch_timeout_s)"))
    with pytest.raises(PoolTimeoutError, match="batch_timeout_s"):
        with engine_errors():
            df.collect()


def test_a_users_own_timeout_is_not_the_pools(spark):
    with pytest.raises(Exception, match="my service timed out") as caught:
        with engine_errors():
            failing_job(spark, TimeoutError("my service timed out")).collect()
    assert not isinstance(caught.value, HybridInferError)


def test_other_errors_pass_through_unchanged(spark):
    with pytest.raises(Exception, match="a user bug") as caught:
        with engine_errors():
            failing_job(spark, ValueError("a user bug")).collect()
    assert not isinstance(caught.value, HybridInferError)


def test_udf_mode_on_cuda_without_a_gpu_is_a_configuration_error(images_df):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = infer_udf(images_df.limit(2), device="cuda")
    with pytest.raises(ConfigurationError, match="device='cuda' .* no GPU.*device='auto'"):
        with engine_errors():
            out.collect()


def test_udf_mode_honours_precision(images_df):
    import numpy as np

    subset = images_df.orderBy("path").limit(4).coalesce(1)
    fp32 = {r["path"]: np.array(r["prediction"]) for r in infer_udf(subset).collect()}
    bf16 = {r["path"]: np.array(r["prediction"])
            for r in infer_udf(subset, precision="bf16").collect()}
    assert sorted(fp32) == sorted(bf16) and len(fp32) == 4
    for path, logits in fp32.items():
        assert not np.array_equal(logits, bf16[path])  # autocast ran
        scale = np.abs(logits).max()
        np.testing.assert_allclose(bf16[path], logits, atol=0.1 * scale, rtol=0)


def infer_udf(df, **settings):
    from hybrid_infer import infer

    return infer(df, TEST_MODEL, weights="random", mode="udf", batch_size=4, torch_threads=1, **settings)
