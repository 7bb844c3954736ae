"""Exceptions the engine raises for problems the user can fix, and the one place that
turns Spark's wrapped errors back into them.

An engine error raised in a Spark task (or inside a Ray actor the task called) reaches
the driver as text: a Python traceback inside Spark's PythonException or a Py4J Java
error. Its last line names the exception's type, `hybrid_infer.errors.PoolError:
message`; `from_spark` looks that type name up and rebuilds the engine's own error.
Errors raised by a Spark expression (fail_fast's `raise_error`) start their message
with the same type name, so the same lookup finds them.
"""

from __future__ import annotations

import contextlib
import re


class HybridInferError(Exception):
    """Base class: a problem with the job's configuration or inputs, with a fix in its text."""

    @classmethod
    def type_name(cls) -> str:
        """The name a traceback prints for this type: the key `from_spark` looks up."""
        return f"{cls.__module__}.{cls.__qualname__}"


class ConfigurationError(HybridInferError, ValueError):
    """A setting, address or name is wrong or unreachable (a ValueError too: a bad value
    given to the Python API, such as a negative pool size)."""


class InputError(HybridInferError):
    """An input path, column or format is missing or not what the job needs."""


class OutputError(HybridInferError):
    """The output path would destroy data (the input, or files the engine did not write)
    or cannot be written."""


class ModelError(HybridInferError):
    """A model name, factory or weights file cannot be used."""


class PoolError(HybridInferError):
    """The actor pool is missing, stopped, or serves a different model."""


class PoolTimeoutError(PoolError, TimeoutError):
    """A batch got no answer from the pool within batch_timeout_s."""


#: Builtin exceptions a task raises for the engine, by the name a traceback prints.
_BUILTINS = {"TimeoutError": PoolTimeoutError}


def _engine_types() -> dict[str, type]:
    found, todo = {}, [HybridInferError]
    while todo:
        cls = todo.pop()
        found[cls.type_name()] = cls
        todo.extend(cls.__subclasses__())
    return {**_BUILTINS, **found}


def from_spark(exc: BaseException) -> HybridInferError | None:
    """The engine error a Spark job (or Py4J call, or Ray actor) failed with, as its own
    type, or None.

    Keyed on the type name the task's traceback ends with, never on the message.
    The last such line wins: it is the exception the task raised last.
    """
    if isinstance(exc, HybridInferError):
        return exc
    types = _engine_types()
    names = "|".join(re.escape(name) for name in sorted(types, key=len, reverse=True))
    found = re.findall(rf"(?<![\w.])({names}): ([^\n]*)", str(exc))
    if not found:
        return None
    name, message = found[-1]
    return types[name](message.rstrip("'\" ").rstrip())


@contextlib.contextmanager
def engine_errors():
    """Run Spark actions; an engine error inside a failed job is raised as its own type.

        with engine_errors():
            infer(df, "resnet18").write.parquet("out.parquet")   # PoolError, not Py4J
    """
    try:
        yield
    except Exception as exc:
        engine_error = from_spark(exc)
        if engine_error is None or engine_error is exc:
            raise
        raise engine_error from exc
