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
    PoolTimeoutError,
    from_spark,
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
