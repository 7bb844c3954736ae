"""The device data path: JPEG bytes -> model batches prepared on the actor's own device.

On a GPU, JPEGs are decoded in batches by nvJPEG (actor/device_decode.py: torchcodec's
or torchvision's batched `decode_jpeg`), resized (shorter side, antialiased bilinear),
centre-cropped and normalised there, in the model's input dtype and memory format. On a
CPU device the same code runs with the CPU JPEG decoder standing in for nvJPEG: that is
how CI tests it. Without a device decoder (`jpeg_decoder=None`: `decode="cpu"` on a GPU
actor, or no backend passed the start-up probe) every row takes the CPU route below.

The per-row contract of the CPU path holds. Only rows that the device decoder can be
trusted with reach it (`decode.device_decodable_pixels`: complete 8-bit baseline JPEGs,
1 or 3 components, within the pixel limits, read from their headers before decoding);
every other row, and any row the device decoder refuses, goes on its own to the CPU
decoder (actor/cpu_decode.py: PIL in worker processes, the same pixels or the same
error as a CPU pool, as uint8).

Device memory is bounded: a model batch's JPEGs are decoded in groups of at most
`pixel_budget` decoded pixels, and each decoded image is freed once resized. A device
out-of-memory while preparing a batch sends its JPEG rows to the CPU decoder (and its
CPU-decoded rows back to the queue; a row that meets a second one fails with the
reason). An unrecoverable CUDA error fails the rows and the actor's `DeviceHealth`: the
actor then refuses work and its pool replaces it.

Flow: callers' rows (views into one copy of the request's Arrow data buffer, no Python
object per row) -> a shared queue -> `decoders` threads, each on its own CUDA stream,
form model batches (device-decoded rows plus CPU-decoded uint8 rows staged through a
reused pinned buffer) -> a bounded queue of ready batches -> the model thread. So the
next batch decodes while the current one computes, and memory stays bounded.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from hybrid_infer.actor.batching import (ActorPipeline, DeviceFailedError, DeviceHealth,
                                         PipelineStats, RowRequest, failure_reason,
                                         is_device_fatal, is_out_of_memory)
from hybrid_infer.actor.cpu_decode import CPU_CHUNK, CpuDecodePool
from hybrid_infer.actor.device_decode import (DEFAULT_PIXEL_BUDGET, JpegDecoder, Normalizer,
                                              pixel_groups, resize_crop_into, synchronized)
from hybrid_infer.decode import Preprocess, device_decodable_pixels

log = logging.getLogger(__name__)


def binary_buffers(column):
    """(offsets, data, valid) of an Arrow binary/large_binary array as NumPy views over
    its buffers: row i is data[offsets[i]:offsets[i + 1]]; no Python object per row."""
    import pyarrow as pa

    offset_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    _, offset_buffer, data_buffer = column.buffers()[:3]
    n = len(column)
    offsets = np.frombuffer(offset_buffer, dtype=offset_type)[column.offset:column.offset + n + 1]
    data = (np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None
            else np.zeros(0, dtype=np.uint8))
    valid = (np.ones(n, dtype=bool) if column.null_count == 0
             else ~column.is_null().to_numpy(zero_copy_only=False))
    return offsets.astype(np.int64), data, valid


class DevicePipeline(ActorPipeline):
    """Arrow binary column -> logits, decoding on the runner's device (see module doc).

    One per preprocessing (its crop sets the batch's shape): `run(column, decode)` takes
    an ImageDecoder of this pipeline's preprocessing (or None).
    """

    def __init__(self, runner, batch_size: int, preprocess: Preprocess, cpu_pool: CpuDecodePool,
                 *, jpeg_decoder: JpegDecoder | None, decoders: int = 2,
                 prefetch_batches: int = 2, stats: PipelineStats | None = None,
                 health: DeviceHealth | None = None, linger_s: float = 0.002,
                 pixel_budget: int = DEFAULT_PIXEL_BUDGET):
        super().__init__(stats, health)
        self.runner = runner
        self.device = runner.device
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.cpu_pool = cpu_pool
        self.jpeg_decoder = jpeg_decoder
        self.pixel_budget = pixel_budget
        self._normalize = Normalizer(preprocess, runner.input_dtype, runner.channels_last)
        self._linger_s = linger_s
        self._closed = False
        self._cond = threading.Condition()
        # (request, index, bytes view, decoded pixels) and (request, index, HWC uint8,
        # had an out-of-memory already)
        self._encoded: collections.deque = collections.deque()
        self._host: collections.deque = collections.deque()
        self._pending = 0  # rows routed here, not yet in a model batch nor failed
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, prefetch_batches))
        self._local = threading.local()
        self._threads = [threading.Thread(target=self._decode_loop, name=f"device-decode-{i}",
                                          daemon=True) for i in range(max(1, decoders))]
        self._threads.append(threading.Thread(target=self._model_loop, name="device-model",
                                              daemon=True))
        for thread in self._threads:
            thread.start()

    # -- callers ---------------------------------------------------------------------
    def _submit(self, request: RowRequest, column, decode) -> None:
        import torch

        preprocess = getattr(decode, "preprocess", self.preprocess)
        if preprocess != self.preprocess:
            raise ValueError(f"this device pipeline prepares {self.preprocess}, not "
                             f"{preprocess}: use the actor's pipeline for that preprocessing")
        n = len(column)
        offsets, data, valid = binary_buffers(column)
        device_rows, pixels, cpu_rows = [], [], []
        if self.jpeg_decoder is not None and n:
            view, rotates = memoryview(data), self.jpeg_decoder.rotates_by_exif
            for index in range(n):
                count = (device_decodable_pixels(view, int(offsets[index]),
                                                 int(offsets[index + 1]), self.preprocess,
                                                 rotates_by_exif=rotates)
                         if valid[index] else 0)
                if count:
                    device_rows.append(index)
                    pixels.append(count)
                else:
                    cpu_rows.append(index)
        else:
            cpu_rows = list(range(n))
        self.stats.add(cpu_decoded_rows=len(cpu_rows))
        with self._cond:
            self._pending += n
        if device_rows:
            # One copy of the request's bytes; each row is a view into it.
            first, last = int(offsets[device_rows[0]]), int(offsets[device_rows[-1] + 1])
            payload = torch.from_numpy(data[first:last].copy())
            with self._cond:
                self._encoded.extend(
                    (request, i, payload[int(offsets[i]) - first:int(offsets[i + 1]) - first],
                     count) for i, count in zip(device_rows, pixels))
                self._cond.notify_all()
        if cpu_rows:
            values = [data[offsets[i]:offsets[i + 1]].tobytes() if valid[i] else None
                      for i in cpu_rows]
            self._to_cpu(request, cpu_rows, values)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the CPU route ---------------------------------------------------------------
    def _to_cpu(self, request, indices: list[int], values: list, *, retried: bool = False,
                attempt: int = 0) -> None:
        """Rows (pending) to the CPU decoder; `retried`: sent after an out-of-memory."""
        for lo in range(0, len(indices), CPU_CHUNK):
            chunk, chunk_values = indices[lo:lo + CPU_CHUNK], values[lo:lo + CPU_CHUNK]
            future = self.cpu_pool.submit(chunk_values, self.preprocess)
            future.add_done_callback(
                lambda done, chunk=chunk, chunk_values=chunk_values: self._cpu_done(
                    request, chunk, chunk_values, retried, attempt, done))

    def _cpu_done(self, request, indices: list[int], values: list, retried: bool,
                  attempt: int, future) -> None:
        try:
            pixels, reasons = future.result()
        except BrokenProcessPool as exc:  # a worker died: a new pool, these rows once more
            if self.cpu_pool.replace_broken(future.pool_generation):
                self.stats.add(cpu_pool_rebuilds=1)
            if attempt == 0:
                try:
                    self._to_cpu(request, indices, values, retried=retried, attempt=1)
                    return
                except Exception as again:  # the pool was shut down: the rows fail
                    exc = again
            pixels, reasons = None, [f"decode failed: {type(exc).__name__}: {exc}"] * len(indices)
        except Exception as exc:  # these rows fail, the batch does not
            pixels, reasons = None, [f"decode failed: {type(exc).__name__}: {exc}"] * len(indices)
        decoded = []
        for position, index in enumerate(indices):
            if reasons[position] is not None:
                self._fail(request, index, reasons[position], pending=True)
            else:
                decoded.append((request, index, pixels[position], retried))
        if decoded:
            with self._cond:
                self._host.extend(decoded)
                self._cond.notify_all()

    def _fail(self, request, index: int, reason: str, *, pending: bool) -> None:
        """Answer one row with `reason`; `pending`: it had not been taken into a batch."""
        self.stats.add(decode_errors=1)
        if pending:
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()
        request.set_error(index, reason)

    # -- decode threads -----------------------------------------------------------------
    def _take(self):
        """Up to batch_size queued rows, waiting briefly for more while rows are on their
        way; None once the pipeline is closed."""
        with self._cond:
            while not (self._encoded or self._host):
                if self._closed:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self._linger_s
            while len(self._encoded) + len(self._host) < self.batch_size \
                    and self._pending > len(self._encoded) + len(self._host):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            encoded = [self._encoded.popleft()
                       for _ in range(min(len(self._encoded), self.batch_size))]
            host = [self._host.popleft()
                    for _ in range(min(len(self._host), self.batch_size - len(encoded)))]
            self._pending -= len(encoded) + len(host)
            return encoded, host

    def _decode_loop(self) -> None:
        import torch

        torch.set_num_threads(1)
        while (taken := self._take()) is not None:
            encoded, host = taken
            try:
                self.health.check()
                items, batch = self._prepare(encoded, host)
            except Exception as exc:  # never the thread: the rows get what happened
                try:
                    self._prepare_failed(encoded, host, exc)
                except Exception as again:  # e.g. the CPU decoder shut down meanwhile
                    log.exception("a batch of %d rows could not be rerouted", len(encoded))
                    for request, index, *_ in encoded + host:
                        request.set_error(index, f"decode failed: {type(again).__name__}: "
                                                 f"{again}")
                continue
            if items:
                self._ready.put((items, batch))  # blocks when prefetch_batches are waiting

    def _prepare_failed(self, encoded: list, host: list, exc: Exception) -> None:
        """A batch that could not be prepared: after an out-of-memory its JPEG rows go to
        the CPU decoder and its CPU-decoded rows back to the queue (a row's second
        out-of-memory fails it); otherwise every row fails with the reason."""
        if is_out_of_memory(exc) and not isinstance(exc, DeviceFailedError):
            self._release_device_memory()
            log.warning("out of device memory preparing a batch of %d rows: its JPEGs go to "
                        "the CPU decoder (%s)", len(encoded) + len(host), exc)
            self.stats.add(out_of_memory_reroutes=len(encoded) + len(host))
            reason = failure_reason(exc)
            again = [(request, index, array, True) for request, index, array, retried in host
                     if not retried]
            for request, index, _, retried in host:
                if retried:
                    self._fail(request, index, reason, pending=False)
            with self._cond:
                self._pending += len(encoded) + len(again)
                self._host.extend(again)
                self._cond.notify_all()
            for request, index, data, _ in encoded:
                self._to_cpu(request, [index], [data.numpy().tobytes()], retried=True)
            return
        if is_device_fatal(exc):
            self.health.fail(exc)
        reason = (str(exc) if isinstance(exc, DeviceFailedError)
                  else failure_reason(exc) if is_device_fatal(exc)
                  else f"decode failed: {type(exc).__name__}: {exc}")
        for request, index, *_ in encoded + host:
            self._fail(request, index, reason, pending=False)

    def _release_device_memory(self) -> None:
        if self.device != "cpu":
            import torch

            torch.cuda.empty_cache()

    def _stream_context(self):
        import torch

        stream = self.runner.stream()
        return (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext(),
                stream)

    def _prepare(self, encoded: list, host: list):
        """(items, normalised NCHW batch on the device) for one model batch."""
        import torch

        crop = self.preprocess.crop
        context, stream = self._stream_context()
        with context, torch.inference_mode(), synchronized(stream):
            rows = torch.empty((len(encoded) + len(host), 3, crop, crop), dtype=torch.uint8,
                               device=self.device)
            placed = self._decode_into(rows, encoded)
            refused = [entry for entry, item in zip(encoded, placed) if item is None]
            items = [item for item in placed if item is not None]
            if host:
                pixels = self._stage(np.stack([array for _, _, array, _ in host]))
                rows[len(items):len(items) + len(host)].copy_(
                    pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2))
                items.extend((request, index) for request, index, _, _ in host)
            batch = self._normalize(rows[:len(items)])
        if refused:  # the device decoder refused these rows: the CPU decoder decides
            self.stats.add(device_decode_failures=len(refused))
            with self._cond:
                self._pending += len(refused)
            for request, index, data, _ in refused:
                self._to_cpu(request, [index], [data.numpy().tobytes()])
        return items, batch

    def _decode_into(self, rows, encoded: list) -> list:
        """Decodes `encoded` in pixel-budget groups into the first rows of `rows` (in
        order); per entry (request, index), or None where the decoder refused the row.
        Each decoded image is freed once resized."""
        placed, filled = [], 0
        for lo, hi in pixel_groups([entry[3] for entry in encoded], self.pixel_budget):
            group = encoded[lo:hi]
            images = self.jpeg_decoder.decode([entry[2] for entry in group], self.stats)
            for position, (request, index, _, _) in enumerate(group):
                image, images[position] = images[position], None
                if image is not None:
                    try:
                        resize_crop_into(rows[filled], image, self.preprocess)
                    except Exception as exc:
                        if is_out_of_memory(exc) or is_device_fatal(exc):
                            raise
                        image = None  # a shape the transform cannot take: the CPU decides
                placed.append((request, index) if image is not None else None)
                filled += image is not None
                del image
        return placed

    def _stage(self, pixels: np.ndarray):
        """CPU-decoded uint8 rows as a tensor; on a GPU through a reused pinned buffer."""
        import torch

        if self.device == "cpu":
            return torch.from_numpy(pixels)
        buffer = getattr(self._local, "staging", None)
        if buffer is None or buffer.shape[0] < len(pixels) or buffer.shape[1:] != pixels.shape[1:]:
            buffer = torch.empty((max(self.batch_size, len(pixels)), *pixels.shape[1:]),
                                 dtype=torch.uint8).pin_memory()
            self._local.staging = buffer
        staged = buffer[:len(pixels)]
        staged.numpy()[...] = pixels
        return staged

    # -- the model thread ---------------------------------------------------------------
    def _model_loop(self) -> None:
        while not (self._closed and self._ready.empty()):
            try:
                items, batch = self._ready.get(timeout=1.0)
            except queue.Empty:
                continue
            self._infer(self.runner.forward, items, batch, lambda inputs, lo, hi: inputs[lo:hi])
