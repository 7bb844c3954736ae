"""What both actor pipelines share: the interface InferenceActor calls, one caller's rows,
the counters, the model call that splits a failing batch, and the actor's device health.

Two pipelines implement `ActorPipeline`: `pipeline.InferencePipeline` (PIL in the
actor's decode threads, CPU actors) and `device_pipeline.DevicePipeline` (JPEGs decoded
on the actor's device, or PIL in worker processes with uint8 sent to the device).
InferenceActor picks one per request by its `DecodePath` and calls `run` the same way.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from hybrid_infer.errors import PoolTimeoutError

log = logging.getLogger(__name__)


class DecodePath(enum.Enum):
    """Where an actor decodes images; the value is what `status()` reports."""

    #: PIL in the actor's decode threads, the ImageNet transform on the CPU (CPU actors).
    THREADS = "cpu"
    #: PIL in worker processes (no shared GIL) to uint8, normalised on the device.
    CPU_PROCESSES = "cpu-uint8"
    #: JPEGs decoded in batches on the actor's device (nvJPEG on a GPU; torchvision's CPU
    #: decoder stands in on a CPU device); other rows as CPU_PROCESSES.
    DEVICE = "gpu"

    @classmethod
    def for_setting(cls, decode: str, device: str) -> "DecodePath":
        """The path an actor on `device` runs for ActorSettings.decode ("auto"/"gpu"/"cpu")."""
        if decode == "gpu" or (decode == "auto" and device != "cpu"):
            return cls.DEVICE
        return cls.CPU_PROCESSES if device != "cpu" else cls.THREADS


class DeviceFailedError(RuntimeError):
    """The actor's device hit an unrecoverable error (a CUDA error other than out of
    memory): the actor refuses work and its ping fails, so the pool replaces it."""


def is_out_of_memory(exc: BaseException) -> bool:
    return (isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__
            or "out of memory" in str(exc).lower())


def is_device_fatal(exc: BaseException) -> bool:
    """A CUDA error after which the device cannot be trusted (sticky errors such as an
    illegal address); out of memory and a decoder's refusal of bad data are not."""
    if is_out_of_memory(exc) or not isinstance(exc, RuntimeError):
        return False
    if type(exc).__name__ == "AcceleratorError":  # torch >= 2.8 raises CUDA errors as this
        return True
    text = str(exc)
    return "CUDA error" in text or "cudaError" in text


class DeviceHealth:
    """Whether this actor's device is still usable; shared by the actor's pipelines.
    `on_failure(exc)` runs once, at the first failure (an actor in Ray exits then)."""

    def __init__(self, on_failure=None):
        self.failure: BaseException | None = None
        self._on_failure = on_failure
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.failure is not None:
                return
            self.failure = exc
        log.error("the actor's device failed (%s: %s): it refuses work from now on and "
                  "its pool replaces it", type(exc).__name__, exc)
        if self._on_failure is not None:
            self._on_failure(exc)

    def check(self) -> None:
        """Raise DeviceFailedError once the device failed (ping and every request call it)."""
        if self.failure is not None:
            raise DeviceFailedError(
                f"this actor's device failed ({type(self.failure).__name__}: "
                f"{self.failure}); the pool replaces the actor, send the rows again")


def failure_reason(exc: BaseException) -> str:
    """A row's reason when the model fails on it alone; out-of-memory gets its own kind."""
    kind = ("out of memory" if is_out_of_memory(exc) else
            "device failed" if is_device_fatal(exc) else "model failed")
    return f"{kind}: {type(exc).__name__}: {exc}"[:500]


#: How far ahead of newer streams a stream's rows may go (see `request_order`).
STREAM_LEAD_S = 5.0


def request_order(stream_started: float, arrived: float,
                  lead_s: float = STREAM_LEAD_S) -> float:
    """The key a request's rows are decoded and computed by, smallest first (monotonic
    seconds). It is the start of the stream the request came on (one Spark task's), so
    the oldest task finishes first and Spark starts its next task while the pool still
    holds the other tasks' rows: no idle pool between waves of tasks, as when every task
    ends at once. But never more than `lead_s` before the request's own arrival: a long
    task holds back a newer one (another job's) by `lead_s` at most, then they share."""
    return max(stream_started, arrived - lead_s)


class RowRequest:
    """One caller's rows: each row's outputs or error fill in as batches finish; a row is
    answered once (a later answer for it is ignored). `order` (request_order) ranks its
    rows against other requests' in a pipeline: smallest first."""

    def __init__(self, n_rows: int, order: float = 0.0):
        self.n_rows = n_rows
        self.order = order
        self.errors: list[str | None] = [None] * n_rows
        self.outputs: np.ndarray | None = None
        self._answered = np.zeros(n_rows, dtype=bool)
        self._lock = threading.Lock()
        self.done = threading.Event()
        if n_rows == 0:
            self.done.set()

    def _fresh(self, indices: list[int]) -> list[int]:
        """The positions of `indices` not answered yet (under the lock)."""
        return [p for p, index in enumerate(indices) if not self._answered[index]]

    def _finish(self) -> None:
        """After the answers are written (under the lock): done when every row is."""
        if self._answered.all():
            self.done.set()

    def set_outputs(self, indices: list[int], rows: np.ndarray) -> None:
        with self._lock:
            fresh = self._fresh(indices)
            if fresh:  # written first: rows that cannot be stored stay unanswered
                targets, values = [indices[p] for p in fresh], rows[fresh]
                if self.outputs is None:
                    self.outputs = np.zeros((self.n_rows, values.shape[1]), dtype=np.float32)
                self.outputs[targets] = values
                self._answered[targets] = True
            self._finish()

    def set_error(self, index: int, reason: str) -> None:
        with self._lock:
            if self._fresh([index]):
                self.errors[index] = reason
                self._answered[index] = True
            self._finish()


@dataclass
class PipelineStats:
    """Counters updated from the decode and model threads (under `lock`)."""

    batches: int = 0          # model forward passes
    rows: int = 0             # rows that reached the model
    decode_errors: int = 0
    model_seconds: float = 0.0  # summed over streams: can exceed wall time
    split_retries: int = 0
    requests: int = 0
    cpu_decoded_rows: int = 0        # device path: rows routed to the CPU decoder
    device_decode_failures: int = 0  # device path: rows the device decoder refused
    device_decode_calls: int = 0     # device path: calls to the batched device decoder
    out_of_memory_reroutes: int = 0  # device path: rows sent to the CPU after an OOM
    cpu_pool_rebuilds: int = 0       # CPU decode worker pools replaced after breaking
    last_used: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **increments) -> None:
        with self.lock:
            for name, value in increments.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> dict:
        """The counters as a dict (no lock, no last_used)."""
        with self.lock:
            return {name: getattr(self, name) for name in self.__dataclass_fields__
                    if name not in ("lock", "last_used")}


class ActorPipeline(ABC):
    """Rows in, each row's outputs or error out, shared by concurrent callers.

    `run(rows, decode, timeout, stream_started)` is the one entry point: `rows` is a
    sequence of values (an Arrow array or a list), `decode` the request's decoder
    (decode.TableImageDecoder or ArrayDecoder), `stream_started` the time.monotonic()
    its stream began (None: now), which ranks its rows (request_order). Subclasses start
    the rows' work in `_submit` and answer every row of the RowRequest, from any thread.
    After an unrecoverable device error (`health`), `run` refuses work.
    """

    def __init__(self, stats: PipelineStats | None = None, health: DeviceHealth | None = None):
        self.stats = stats or PipelineStats()
        self.health = health or DeviceHealth()

    def run(self, rows, decode, timeout: float | None = None,
            stream_started: float | None = None):
        """Decode and infer `rows`; returns (outputs (n, k) or None, errors list)."""
        self.health.check()
        arrived = time.monotonic()
        request = RowRequest(len(rows), request_order(
            arrived if stream_started is None else stream_started, arrived))
        self.stats.add(requests=1)
        self.stats.last_used = time.time()
        self._submit(request, rows, decode)
        if not request.done.wait(timeout):
            raise PoolTimeoutError(f"a batch of {len(rows)} rows was not done within "
                                   f"{timeout} s (the pool's batch_timeout_s): raise "
                                   "batch_timeout_s, or add actors (num_actors)")
        self.stats.last_used = time.time()
        return request.outputs, request.errors

    @abstractmethod
    def _submit(self, request: RowRequest, rows, decode) -> None:
        """Start the rows' work; every row of `request` must be answered eventually."""

    def close(self) -> None:
        """Stop the pipeline's threads (rows still queued are not answered)."""

    def _infer(self, run_model, items: list, inputs, take) -> None:
        """infer_split, guarded: whatever escapes it fails this batch's unanswered rows,
        never the calling thread; an unrecoverable device error also marks the device
        failed (the actor then refuses work and the pool replaces it)."""
        try:
            self.health.check()  # a failed device computes nothing more
            infer_split(run_model, items, inputs, self.stats, take)
        except Exception as exc:
            if is_device_fatal(exc):
                self.health.fail(exc)
            reason = str(exc) if isinstance(exc, DeviceFailedError) else failure_reason(exc)
            for item in items:
                item[0].set_error(item[1], reason)
            if not is_device_fatal(exc) and not isinstance(exc, DeviceFailedError):
                log.exception("a model batch of %d rows failed outside the model call",
                              len(items))


def infer_split(run_model, items: list, inputs, stats: PipelineStats, take) -> None:
    """run_model(inputs) for rows items = [(request, index, ...)]; on failure split the
    rows in halves (take(inputs, lo, hi)) down to single rows, whose reason is the error.
    An unrecoverable device error is raised, not split. Each row's outputs go back to
    its request."""
    started = time.perf_counter()
    try:
        outputs = run_model(inputs)
    except Exception as exc:
        if is_device_fatal(exc):
            raise
        if len(items) > 1:
            stats.add(split_retries=1)
            middle = len(items) // 2
            infer_split(run_model, items[:middle], take(inputs, 0, middle), stats, take)
            infer_split(run_model, items[middle:], take(inputs, middle, len(items)), stats,
                        take)
        else:
            request, index = items[0][0], items[0][1]
            request.set_error(index, failure_reason(exc))
        return
    stats.add(model_seconds=time.perf_counter() - started, batches=1, rows=len(items))
    by_request: dict[int, tuple[RowRequest, list[int], list[int]]] = {}
    for position, item in enumerate(items):
        entry = by_request.setdefault(id(item[0]), (item[0], [], []))
        entry[1].append(item[1])
        entry[2].append(position)
    for request, indices, positions in by_request.values():
        request.set_outputs(indices, outputs[positions])
