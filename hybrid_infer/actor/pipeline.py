"""The DataLoader-style pipeline inside one actor.

Rows of every request (one Arrow batch each) are decoded in parallel by a thread pool
(PIL releases the GIL), queued, and re-batched by the model threads, whatever the Arrow
batch sizes. There are `streams` model threads: each computes batch_size / streams rows
at a time, so the actor computes batch_size rows at once however they are split. On a
CPU, several single-threaded streams beat one batch over several intra-op threads (no
synchronisation between the threads at every layer; measured 1.2-1.6x for ResNets on 2
cores). Decoding runs ahead of the model by a bounded number of rows, so the next rows
are ready while the current ones compute and memory stays bounded. Each row's logits or
error go back to the request it came from.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from hybrid_infer.decode import DecodeError


def failure_reason(exc: BaseException) -> str:
    """A row's reason when the model fails on it alone; out-of-memory gets its own kind."""
    kind = ("out of memory" if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__
            else "model failed")
    return f"{kind}: {type(exc).__name__}: {exc}"[:500]


class _Request:
    """One caller's rows: results fill in as model batches finish."""

    def __init__(self, n_rows: int, num_outputs: int | None):
        self.n_rows = n_rows
        self.errors: list[str | None] = [None] * n_rows
        self.outputs: np.ndarray | None = None
        self._remaining = n_rows
        self._lock = threading.Lock()
        self.done = threading.Event()
        if n_rows == 0:
            self.done.set()

    def _finish_rows(self, count: int) -> None:
        with self._lock:
            self._remaining -= count
            if self._remaining == 0:
                self.done.set()

    def set_outputs(self, indices: list[int], rows: np.ndarray) -> None:
        with self._lock:
            if self.outputs is None:
                self.outputs = np.zeros((self.n_rows, rows.shape[1]), dtype=np.float32)
            self.outputs[indices] = rows
        self._finish_rows(len(indices))

    def set_error(self, index: int, reason: str) -> None:
        self.errors[index] = reason
        self._finish_rows(1)


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
    last_used: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **increments) -> None:
        with self.lock:
            for name, value in increments.items():
                setattr(self, name, getattr(self, name) + value)


class InferencePipeline:
    """Parallel decode -> re-batch -> model, shared by concurrent requests.

    run_model: callable(list of CHW tensors) -> np.ndarray (n, outputs), called from
    `streams` threads at once (each runs `stream_setup()` first, e.g. to set its torch
    threads; decode threads run `decode_setup()`). When it raises (e.g. out of memory),
    the rows are split in halves and retried down to single rows; a row that still
    fails gets the error as its reason.
    """

    def __init__(self, run_model, batch_size: int, decode_threads: int = 2,
                 prefetch_batches: int = 2, streams: int = 1, stream_setup=None,
                 decode_setup=None, stats: PipelineStats | None = None):
        self._run_model = run_model
        self.batch_size = batch_size
        self.streams = max(1, min(streams, batch_size))
        #: Rows one stream computes at once: the streams share the batch.
        self.stream_rows = -(-batch_size // self.streams)
        self.stats = stats or PipelineStats()
        self._decode_pool = ThreadPoolExecutor(max(1, decode_threads),
                                               thread_name_prefix="decode",
                                               initializer=decode_setup)
        self._ready: queue.Queue = queue.Queue()
        # Decoding may run at most this many rows ahead of the model.
        self._prefetch = threading.BoundedSemaphore(batch_size * max(1, prefetch_batches))
        self._decoding = 0
        self._decoding_lock = threading.Lock()
        self._model_threads = [
            threading.Thread(target=self._model_loop, args=(stream_setup,),
                             name=f"model-{index}", daemon=True)
            for index in range(self.streams)]
        for thread in self._model_threads:
            thread.start()

    def run(self, values: list, decode, timeout: float | None = None):
        """Decode and infer `values`; returns (outputs (n, k) or None, errors list)."""
        request = _Request(len(values), None)
        self.stats.add(requests=1)
        self.stats.last_used = time.time()
        with self._decoding_lock:  # counted before any is submitted: none can finish first
            self._decoding += len(values)
        for index, value in enumerate(values):
            self._decode_pool.submit(self._decode_one, request, index, value, decode)
        if not request.done.wait(timeout):
            raise TimeoutError(f"a batch of {len(values)} rows was not done within {timeout} s "
                               "(the pool's batch_timeout_s)")
        self.stats.last_used = time.time()
        return request.outputs, request.errors

    def _decode_one(self, request: _Request, index: int, value, decode) -> None:
        self._prefetch.acquire()
        try:
            tensor = decode(value)
        except DecodeError as exc:
            self._prefetch.release()
            self.stats.add(decode_errors=1)
            request.set_error(index, str(exc))
        except Exception as exc:  # a decoder bug must not lose the row
            self._prefetch.release()
            self.stats.add(decode_errors=1)
            request.set_error(index, f"decode failed: {type(exc).__name__}: {exc}")
        else:
            self._ready.put((request, index, tensor))
        finally:
            with self._decoding_lock:
                self._decoding -= 1

    def _next_batch(self) -> list:
        items = [self._ready.get()]
        while len(items) < self.stream_rows:
            try:
                items.append(self._ready.get_nowait())
                continue
            except queue.Empty:
                pass
            with self._decoding_lock:
                still_decoding = self._decoding > 0
            if not still_decoding:
                break
            try:  # rows are on their way: wait for them rather than run a short batch
                items.append(self._ready.get(timeout=0.05))
            except queue.Empty:
                continue
        return items

    def _model_loop(self, setup) -> None:
        if setup is not None:
            setup()
        while True:
            items = self._next_batch()
            for _ in items:
                self._prefetch.release()
            self._infer_items(items)

    def _infer_items(self, items: list) -> None:
        infer_split(self._run_model, items, [tensor for _, _, tensor in items], self.stats,
                    lambda inputs, lo, hi: inputs[lo:hi])


def infer_split(run_model, items: list, inputs, stats: PipelineStats, take) -> None:
    """run_model(inputs) for rows items = [(request, index, ...)]; on failure split the
    rows in halves (take(inputs, lo, hi)) down to single rows, whose reason is the error.
    Each row's outputs go back to its request."""
    started = time.perf_counter()
    try:
        outputs = run_model(inputs)
    except Exception as exc:
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
    by_request: dict[int, tuple[_Request, list[int], list[int]]] = {}
    for position, item in enumerate(items):
        entry = by_request.setdefault(id(item[0]), (item[0], [], []))
        entry[1].append(item[1])
        entry[2].append(position)
    for request, indices, positions in by_request.values():
        request.set_outputs(indices, outputs[positions])
