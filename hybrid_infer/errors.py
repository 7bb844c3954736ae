"""Exceptions the engine raises for problems the user can fix, and the one module that
turns errors from elsewhere back into them.

Each engine error is raised with its own type where it happens (a batch past its
batch_timeout_s raises PoolTimeoutError in the actor or the task); nothing here
guesses an engine error from a builtin one, so a user's own TimeoutError stays a
TimeoutError. Three ways an error comes back, one function each:

- from a Spark job (or a Py4J call, or a Ray actor's failed constructor), as text: a
  traceback whose last engine line reads `hybrid_infer.errors.PoolError: message`;
  `from_spark` looks up the engine's type names only, never a user's or a builtin
  type. Errors raised by a Spark expression (fail_fast's `raise_error`) start their
  message with the same type name, so the same lookup finds them;
- from a Ray task or actor method: `unwrapped` takes the engine error Ray carries;
- from a pool's Flight server (transport/protocol.py sends a type's module, name and
  message): `rebuilt` raises the engine's or a builtin type again.
"""

from __future__ import annotations

import builtins
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


class PoolRequestError(PoolError):
    """A pool's server refused one request (a malformed or oversized Arrow batch, or a
    stream of a kind it does not serve): that request's error; the server serves on."""


def _engine_types() -> dict[str, type]:
    found, todo = {}, [HybridInferError]
    while todo:
        cls = todo.pop()
        found[cls.type_name()] = cls
        todo.extend(cls.__subclasses__())
    return found


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


def unwrapped(exc: Exception) -> Exception:
    """The engine's own error inside a Ray task/actor error (its `cause`), so its message
    stays short; else `exc` itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, HybridInferError) else exc


def rebuilt(module: str, type_name: str, message: str) -> Exception:
    """An error a pool's server sent by its type's module and name: the engine's or a
    builtin type again, else a RuntimeError naming the type (a user's own)."""
    cls = None
    if module == __name__:
        cls = _engine_types().get(f"{module}.{type_name}")
    elif module == "builtins":
        cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except TypeError:
            pass
    return RuntimeError(f"{module}.{type_name}: {message}")


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
