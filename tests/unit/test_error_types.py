"""How the driver reads the engine's errors back from a failed Spark job's text.

The mapping is keyed on the type name a task's traceback ends with; a message that
merely mentions an engine error's text is not one. (Real Spark jobs raising them:
tests/integration/test_errors.py.)
"""

from __future__ import annotations

import pytest

from hybrid_infer.errors import (
    ConfigurationError,
    InputError,
    PoolError,
    PoolRequestError,
    PoolTimeoutError,
    from_spark,
    rebuilt,
    unwrapped,
)

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
    ("hybrid_infer.errors.PoolTimeoutError: a batch of 8 rows got no answer",
     PoolTimeoutError, "a batch of 8 rows got no answer"),
    ("hybrid_infer.errors.PoolRequestError: a malformed Arrow request batch was refused",
     PoolRequestError, "a malformed Arrow request batch was refused"),
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
    # a user's own timeout is the user's, not the pool's (no builtin is mapped)
    assert from_spark(RuntimeError(TRACE.replace("{last}", "TimeoutError: my API"))) is None
    error = PoolError("already typed")
    assert from_spark(error) is error


def test_a_subclass_defined_later_is_found_by_its_own_name():
    class LateError(PoolError):
        pass

    error = from_spark(RuntimeError(f"{LateError.type_name()}: late"))
    assert type(error) is LateError and str(error) == "late"
    assert PoolTimeoutError.type_name() == "hybrid_infer.errors.PoolTimeoutError"
    assert issubclass(PoolTimeoutError, TimeoutError)


def test_an_error_a_pool_server_sent_is_raised_again_with_its_type():
    error = rebuilt("hybrid_infer.errors", "PoolRequestError", "refused: send smaller ones")
    assert type(error) is PoolRequestError and str(error) == "refused: send smaller ones"
    assert type(rebuilt("builtins", "ZeroDivisionError", "x")) is ZeroDivisionError
    assert type(rebuilt("builtins", "TimeoutError", "mine")) is TimeoutError  # not the pool's
    other = rebuilt("my.module", "PoolError", "ours?")
    assert type(other) is RuntimeError and str(other) == "my.module.PoolError: ours?"
    assert type(rebuilt("hybrid_infer.errors", "NoSuchError", "m")) is RuntimeError


def test_the_engine_error_a_ray_error_carries_is_taken_out():
    class RayTaskErrorLike(Exception):
        def __init__(self, cause):
            super().__init__(f"long Ray text around {cause}")
            self.cause = cause

    inner = PoolError("the pool's own words")
    assert unwrapped(RayTaskErrorLike(inner)) is inner
    user = RayTaskErrorLike(ValueError("a user's"))
    assert unwrapped(user) is user
