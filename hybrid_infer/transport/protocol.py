"""What travels between a Spark task and a pool, and how it is secured.

- `PoolAddress`: where a pool answers (its manager and its actors, as Flight URIs),
  the pool's access token and, with TLS, the certificate that signs its servers. The
  driver gets it from the pool (Ray) and ships it to the tasks in their closure.
- A stream's header: the job's options (`RequestOptions`), serialised once on the
  driver and sent once per DoExchange stream (never with each batch).
- A request: an Arrow batch of the job's rows, or for predict_batch_udf one
  `PredictRequest` pickled into a one-row batch.
- Every call carries `authorization: Bearer <token>`; servers refuse any other.
- Errors a pool raises on purpose (the engine's own, a user's predict function's) travel
  as their type name and message and are raised again in the task with the same type.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field

import pyarrow as pa

from hybrid_infer.decode import Preprocess
from hybrid_infer.errors import rebuilt

AUTH_HEADER = "authorization"
#: marks FlightServerError.extra_info of an error raised by the served code itself
APP_ERROR = b"hybrid_infer-app-error:"
#: a stream's metadata-only message: "still computing your batches" (every second)
HEARTBEAT = b"hybrid_infer-heartbeat"


@dataclass(frozen=True)
class PoolAddress:
    """Everything a Spark task needs to use a pool; holds no Ray object."""

    pool_name: str
    manager: str
    actors: tuple[str, ...]
    token: str
    #: PEM of the certificate the pool's servers present (TLS), else None
    tls_root_cert: bytes | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never print the token
        return (f"PoolAddress({self.pool_name!r}, manager={self.manager!r}, "
                f"actors={list(self.actors)!r})")


@dataclass(frozen=True)
class RequestOptions:
    """A job's per-request choices that do not change the loaded model: sent once per
    stream in its header (dumps_options), read by the actor for every batch."""

    preprocess: Preprocess = Preprocess()
    top_k: int = 0
    #: Non-image inputs: rows are numeric arrays reshaped to this shape, not decoded.
    input_shape: tuple[int, ...] | None = None
    #: One name per class: top-k results then carry the classes' names.
    class_names: tuple[str, ...] | None = None
    #: The caller's ClientSettings.batch_timeout_s: the actor gives up on a batch then.
    batch_timeout_s: float = 600.0
    #: The job's JobOptions.job_id: the actor counts the rows it answers under it.
    job_id: str | None = None


def bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


#: The largest request message a server takes (Arrow's binary columns end at 2 GiB).
MAX_MESSAGE_BYTES = 2**31 - 1
#: The most a header (its JSON part and the job's pickled options) may weigh.
MAX_HEADER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class StreamHeader:
    kind: str
    #: each request row's bytes stay below this (the job's max_row_bytes): a larger
    #: request batch is refused (None: only MAX_MESSAGE_BYTES bounds it)
    max_row_bytes: int | None
    options_blob: bytes


def encode_header(kind: str, options_blob: bytes = b"", *,
                  max_row_bytes: int | None = None) -> bytes:
    """A stream's descriptor: what the stream serves, the job's max_row_bytes and the
    job's options (once)."""
    head = {"kind": kind}
    if max_row_bytes is not None:
        head["max_row_bytes"] = int(max_row_bytes)
    return json.dumps(head).encode() + b"\n" + options_blob


def decode_header(command: bytes) -> StreamHeader:
    """The header's parts; ValueError (with no traceback worth sending) when malformed."""
    if len(command) > MAX_HEADER_BYTES:
        raise ValueError(f"a stream header of {len(command)} bytes is over "
                         f"{MAX_HEADER_BYTES} bytes")
    head, _, blob = command.partition(b"\n")
    try:
        fields = json.loads(head)
        kind = fields["kind"]
        max_row_bytes = fields.get("max_row_bytes")
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ValueError("malformed stream header: expected a JSON object with 'kind', "
                         "a newline, then the job's options") from None
    if not isinstance(kind, str) or not (max_row_bytes is None or (
            type(max_row_bytes) is int and max_row_bytes > 0)):
        raise ValueError("malformed stream header: 'kind' must be a string and "
                         "'max_row_bytes' a positive whole number")
    return StreamHeader(kind, max_row_bytes, blob)


def dumps_options(options) -> bytes:
    """The job's options for the header: pickled ONCE on the driver."""
    return pickle.dumps(options, protocol=5) if options is not None else b""


def loads_options(blob: bytes):
    # The token gates every call: a caller holding it can already run code in the pool
    # (predict_batch_udf ships a pickled make_predict_fn), so unpickling adds no power.
    return pickle.loads(blob) if blob else None


# -- Python objects as one-row Arrow batches (predict_batch_udf's NumPy inputs) --------
OBJECT_SCHEMA = pa.schema([pa.field("pickled", pa.binary())])


@dataclass(frozen=True)
class PredictRequest:
    """One batch for a predict-function pool: positional NumPy inputs (or one dict when
    named), sent as one object_batch row."""

    inputs: tuple
    num_rows: int


def object_batch(value) -> pa.RecordBatch:
    """A Python object (NumPy arrays, dicts of them) as one row of pickled bytes."""
    return pa.RecordBatch.from_arrays([pa.array([pickle.dumps(value, protocol=5)],
                                                pa.binary())], schema=OBJECT_SCHEMA)


def batch_object(batch: pa.RecordBatch):
    return pickle.loads(batch.column(0)[0].as_py())


# -- errors --------------------------------------------------------------------------------
def app_error_info(exc: BaseException) -> bytes:
    return APP_ERROR + json.dumps({"module": type(exc).__module__,
                                   "type": type(exc).__name__,
                                   "message": str(exc)}).encode()


def rebuild_app_error(extra_info: bytes | None) -> Exception | None:
    """The served code's exception, with its own type when it is the engine's or a
    builtin one (errors.rebuilt; else a RuntimeError naming it); None for a transport
    failure."""
    if not extra_info or not extra_info.startswith(APP_ERROR):
        return None
    info = json.loads(extra_info[len(APP_ERROR):])
    return rebuilt(info["module"], info["type"], info["message"])
