"""Engine errors raised in Spark tasks come back to the driver as the engine's own types.

The mapping is keyed on the type name a task's traceback ends with; a message that
merely mentions an engine error's text is not one. Real Spark jobs raise them here.
"""

from __future__ import annotations

import pytest

from hybrid_infer.errors import (
    ConfigurationError,
    HybridInferError,
    InputError,
    PoolError,
    PoolTimeoutError,
    engine_errors,
    from_spark,
)

from predictions import TEST_MODEL

TRACE = """An exception was thrown from the Python worker. Please see the stack trace below.
Traceback (most recent call last):
  File "/x/worker.py", line 1247, in main
    process()
  File "/x/hybrid.py", line 40, in infer_partition
    raise PoolError(f"pool {name!r}: gone")
{last}
\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException
"""


@pytest.mark.parametrize("last, kind, message", [
    ("hybrid_infer.errors.PoolError: pool 'p' was stopped", PoolError, "pool 'p' was stopped"),
    ("hybrid_infer.errors.ConfigurationError: device='cuda': no GPU", ConfigurationError,
     "device='cuda': no GPU"),
    ("TimeoutError: a batch of 8 rows got no answer", PoolTimeoutError,
     "a batch of 8 rows got no answer"),
    ("java.lang.RuntimeException: hybrid_infer.errors.InputError: bad record (fail_fast): "
     "row id=3: not an image'", InputError, "bad record (fail_fast): row id=3: not an image"),
])
def test_the_type_name_picks_the_error(last, kind, message):
    error = from_spark(RuntimeError(TRACE.replace("{last}", last)))
    assert type(error) is kind and str(error) == message


def test_text_that_is_not_a_raised_engine_error_is_left_alone():
    assert from_spark(RuntimeError(TRACE.replace("{last}", "ValueError: no PoolError here"))) \
        is None
    assert from_spark(RuntimeError("my.module.PoolError: not ours")) is None
    error = PoolError("already typed")
    assert from_spark(error) is error


def test_a_subclass_defined_later_is_found_by_its_own_name():
    class LateError(PoolError):
        pass

    error = from_spark(RuntimeError(f"{LateError.type_name()}: late"))
    assert type(error) is LateError and str(error) == "late"
    assert PoolTimeoutError.type_name() == "hybrid_infer.errors.PoolTimeoutError"
    assert issubclass(PoolTimeoutError, TimeoutError)


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


def test_a_builtin_timeout_in_a_task_is_the_pool_timeout(spark):
    df = failing_job(spark, TimeoutError("a batch got no answer in 0.1 s (batch_timeout_s)"))
    with pytest.raises(PoolTimeoutError, match="batch_timeout_s"):
        with engine_errors():
            df.collect()


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
