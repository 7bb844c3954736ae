"""The DataLoader-style pipeline inside one actor.

Rows of every request (one Arrow batch each) are decoded in parallel by decode threads
(PIL releases the GIL), queued, and re-batched by the model threads, whatever the Arrow
batch sizes. Rows are decoded by their request's order (batching.request_order): the
oldest stream's first, so Spark's tasks finish one after another rather than together.
There are `streams` model threads: each computes batch_size / streams rows at a time, so
the actor computes batch_size rows at once however they are split. On a CPU, several
single-threaded streams beat one batch over several intra-op threads (no synchronisation
between the threads at every layer; measured 1.2-1.6x for ResNets on 2 cores). Decoding
runs ahead of the model by a bounded number of rows, so the next rows are ready while
the current ones compute and memory stays bounded. Each row's logits or error go back to
the request it came from.
"""

from __future__ import annotations

import itertools
import queue
import threading

from hybrid_infer.actor.batching import (ActorPipeline, DeviceHealth, PipelineStats,
                                         RowRequest)
from hybrid_infer.decode import DecodeError

#: Queued by close(): a model thread that takes it stops.
_STOP = object()
#: How often a decode thread waiting for a prefetch slot checks that the pipeline is open.
_CLOSED_CHECK_S = 0.5


class InferencePipeline(ActorPipeline):
    """Parallel decode -> re-batch -> model, shared by concurrent requests.

    run_model: callable(an NCHW batch, or a list of CHW tensors; see model_inputs) ->
    np.ndarray (n, outputs), called from
    `streams` threads at once (each runs `stream_setup()` first, e.g. to set its torch
    threads; decode threads run `decode_setup()`). When it raises (e.g. out of memory),
    the rows are split in halves and retried down to single rows; a row that still
    fails gets the error as its reason.
    """

    def __init__(self, run_model, batch_size: int, decode_threads: int = 2,
                 prefetch_batches: int = 2, streams: int = 1, stream_setup=None,
                 decode_setup=None, stats: PipelineStats | None = None,
                 health: DeviceHealth | None = None):
        super().__init__(stats, health)
        self._run_model = run_model
        self.batch_size = batch_size
        self.streams = max(1, min(streams, batch_size))
        #: Rows one stream computes at once: the streams share the batch.
        self.stream_rows = -(-batch_size // self.streams)
        #: Rows to decode, smallest (order, arrival) first: (order, sequence, request,
        #: index, value, decode); close() queues a stop that sorts before every row.
        self._to_decode: queue.PriorityQueue = queue.PriorityQueue()
        self._sequence = itertools.count()
        self._closed = threading.Event()
        self._decode_threads = [
            threading.Thread(target=self._decode_loop, args=(decode_setup,),
                             name=f"decode-{index}", daemon=True)
            for index in range(max(1, decode_threads))]
        self._ready: queue.Queue = queue.Queue()
        # Decoding may run at most this many rows ahead of the model.
        self._prefetch = threading.BoundedSemaphore(batch_size * max(1, prefetch_batches))
        self._decoding = 0
        self._decoding_lock = threading.Lock()
        self._model_threads = [
            threading.Thread(target=self._model_loop, args=(stream_setup,),
                             name=f"model-{index}", daemon=True)
            for index in range(self.streams)]
        for thread in self._model_threads + self._decode_threads:
            thread.start()

    def _submit(self, request: RowRequest, rows, decode) -> None:
        values = rows.to_pylist() if hasattr(rows, "to_pylist") else rows
        with self._decoding_lock:  # counted before any is submitted: none can finish first
            self._decoding += len(values)
        for index, value in enumerate(values):
            self._to_decode.put((request.order, next(self._sequence), request, index, value,
                                 decode))

    def _queue_decode_stop(self) -> None:
        self._to_decode.put((float("-inf"), next(self._sequence), None, None, None, None))

    def _decode_loop(self, setup) -> None:
        """Take the first row in order once there is room ahead of the model; decode it."""
        if setup is not None:
            setup()
        while not self._closed.is_set():
            if not self._prefetch.acquire(timeout=_CLOSED_CHECK_S):
                continue
            _, _, request, index, value, decode = self._to_decode.get()
            if request is None:  # closing: the next thread takes the stop too
                self._queue_decode_stop()
                return
            self._decode_one(request, index, value, decode)

    def _decode_one(self, request: RowRequest, index: int, value, decode) -> None:
        """Decode one row (a prefetch slot taken) into the ready queue, or answer its error."""
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
            self._ready.put((request, index, tensor, decode))
        finally:
            with self._decoding_lock:
                self._decoding -= 1

    def close(self) -> None:
        self._closed.set()
        self._queue_decode_stop()
        for _ in self._model_threads:
            self._ready.put(_STOP)

    def _next_batch(self) -> list | None:
        """Up to stream_rows decoded rows; None once the pipeline is closed."""
        first = self._ready.get()
        if first is _STOP:
            return None
        items = [first]
        while len(items) < self.stream_rows:
            try:
                items.append(self._ready.get_nowait())
                if items[-1] is _STOP:  # closing: this batch is the last
                    self._ready.put(items.pop())
                    break
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
            if items[-1] is _STOP:
                self._ready.put(items.pop())
                break
        return items

    def _model_loop(self, setup) -> None:
        if setup is not None:
            setup()
        while (items := self._next_batch()) is not None:
            for _ in items:
                self._prefetch.release()
            self._infer_items(items)

    def _infer_items(self, items: list) -> None:
        self._infer(self._run_model, items, model_inputs(items),
                    lambda inputs, lo, hi: inputs[lo:hi])


def model_inputs(items: list):
    """The model's input for decoded items (request, index, row, decode): one batch from
    `decode.collate` when every row came from the same decoder that has one (the CPU
    actors' TableImageDecoder), else the rows as a list (run_model stacks them)."""
    decode = items[0][3]
    collate = getattr(decode, "collate", None)
    if collate is not None and all(item[3] is decode for item in items):
        return collate([row for _, _, row, _ in items])
    return [item[3].collate([item[2]])[0] if hasattr(item[3], "collate") else item[2]
            for item in items]
