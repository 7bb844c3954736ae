"""The device data path: JPEG bytes -> model batches decoded on the actor's own device.

On a GPU, JPEGs are decoded in batches by nvJPEG (`torchvision.io.decode_jpeg(list,
device="cuda")`), resized (shorter side, antialiased bilinear), centre-cropped and
normalised there, in the model's input dtype and memory format. On a CPU device the
same code runs with torchvision's CPU JPEG decoder standing in for nvJPEG: that is how
CI tests it.

The per-row contract of the CPU path holds. Only rows that the device decoder can be
trusted with reach it (`decode.device_decodable`: complete 8-bit baseline JPEGs, 1 or
3 components, within the pixel limits, read from their headers before decoding);
every other row, and any row whose device decode raises, goes on its own to the CPU
decoder (`CpuDecodePool`: PIL, the same pixels or the same error as a CPU pool, as
uint8). A batch is decoded on the device at most twice (once batched, then row by row
if the batched call raised) and a row at most once more on the CPU.

Flow: callers' rows (views into one copy of the request's Arrow data buffer, no Python
object per row) -> a shared queue -> `decoders` threads, each on its own CUDA stream,
form model batches (device-decoded rows plus CPU-decoded uint8 rows staged through a
reused pinned buffer) -> a bounded queue of ready batches -> the model thread. So the
next batch decodes while the current one computes, and memory stays bounded.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from hybrid_infer.actor.pipeline import PipelineStats, _Request, infer_split
from hybrid_infer.decode import (Preprocess, center_crop_box, decode_uint8_many,
                                 device_decodable, resized_size)

#: Rows per CPU decode task (amortises the hop to a worker process).
CPU_CHUNK = 8


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


# --- the transforms, on any device --------------------------------------------------

def resize_crop_into(out, image, preprocess: Preprocess) -> None:
    """torchvision's Resize(resize) + CenterCrop(crop) of one uint8 CHW image (any device)
    written into `out` (uint8 (3, crop, crop) on the same device). Antialiased bilinear,
    rounded to uint8 as PIL does; zero padding where the crop exceeds the image."""
    import torch.nn.functional as F

    if image.shape[0] == 1:  # greyscale -> 3 channels
        image = image.expand(3, -1, -1)
    height, width = image.shape[-2:]
    new_width, new_height = resized_size(width, height, preprocess.resize)
    if (new_width, new_height) != (width, height):
        batch = image.unsqueeze(0)
        if image.device.type == "cpu":  # a native uint8 kernel, rounding like PIL
            image = F.interpolate(batch, size=(new_height, new_width), mode="bilinear",
                                  antialias=True, align_corners=False)[0]
        else:
            image = F.interpolate(batch.float(), size=(new_height, new_width),
                                  mode="bilinear", antialias=True,
                                  align_corners=False)[0].round_()  # stays in 0..255
    crop = preprocess.crop
    left, top, _, _ = center_crop_box(new_width, new_height, crop)
    if left >= 0 and top >= 0 and left + crop <= new_width and top + crop <= new_height:
        out.copy_(image[:, top:top + crop, left:left + crop])
        return
    out.zero_()  # the crop is larger than the resized image: zero padding around it
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + crop, new_height), min(left + crop, new_width)
    out[:, src_top - top:src_bottom - top, src_left - left:src_right - left].copy_(
        image[:, src_top:src_bottom, src_left:src_right])


def normalize(batch, preprocess: Preprocess, dtype=None, channels_last: bool = False):
    """uint8 NCHW -> ToTensor + Normalize: (x / 255 - mean) / std, in `dtype` (computed in
    float32) and, with channels_last, that memory format."""
    import torch

    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=batch.device)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=batch.device)
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    out = batch.to(torch.float32).mul_(scale).sub_(shift)
    if dtype is not None and dtype != torch.float32:
        out = out.to(dtype)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def decode_jpegs(encoded: list, device: str) -> list:
    """Decoded uint8 CHW images (RGB) for 1-D uint8 CPU tensors of JPEG bytes; None for a
    row the decoder refused. One batched call; if it raises, each row once on its own."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not encoded:
        return []
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except Exception:
        pass
    decoded = []
    for data in encoded:
        try:
            decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except Exception:
            decoded.append(None)
    return decoded


# --- CPU decoding that no single GIL caps ---------------------------------------------

def default_cpu_workers() -> int:
    """Cores this process may use, less one for the actor's own threads."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class CpuDecodePool:
    """PIL decode + resize + crop to uint8 (decode.decode_uint8_many) on `workers` worker
    processes ("process": no shared GIL) or threads ("thread"). Started on first use."""

    def __init__(self, workers: int | None = None, kind: str = "process"):
        if kind not in ("process", "thread"):
            raise ValueError(f"kind must be 'process' or 'thread', got {kind!r}")
        self.workers = workers or default_cpu_workers()
        self.kind = kind
        self._executor = None
        self._lock = threading.Lock()

    def _pool(self):
        with self._lock:
            if self._executor is None:
                if self.kind == "thread":
                    self._executor = ThreadPoolExecutor(self.workers,
                                                        thread_name_prefix="cpu-decode")
                else:
                    import multiprocessing

                    # spawn: the actor holds threads (and maybe CUDA): fork is unsafe.
                    self._executor = ProcessPoolExecutor(
                        self.workers, mp_context=multiprocessing.get_context("spawn"))
            return self._executor

    def submit(self, values: list, preprocess: Preprocess) -> Future:
        """-> Future of ((n, crop, crop, 3) uint8, reasons)."""
        return self._pool().submit(decode_uint8_many, values, preprocess)

    def warm_up(self) -> None:
        """Start every worker now (spawned processes take a moment to import)."""
        futures = [self.submit([], Preprocess()) for _ in range(self.workers)]
        for future in futures:
            future.result()

    def shutdown(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None


# --- the pipeline -----------------------------------------------------------------------

class DevicePipeline:
    """Arrow binary column -> logits, decoding on the runner's device (see module doc).

    decode_on_device=False sends every row through `cpu_pool` (uint8 to the device, then
    normalised there): `PoolSettings(decode="cpu")` on a GPU actor.
    """

    def __init__(self, runner, batch_size: int, preprocess: Preprocess, cpu_pool: CpuDecodePool,
                 *, decode_on_device: bool = True, decoders: int = 2, prefetch_batches: int = 2,
                 stats: PipelineStats | None = None, linger_s: float = 0.002):
        self.runner = runner
        self.device = runner.device
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.cpu_pool = cpu_pool
        self.decode_on_device = decode_on_device
        self.stats = stats or PipelineStats()
        self._linger_s = linger_s
        self._cond = threading.Condition()
        self._encoded: collections.deque = collections.deque()  # (request, index, bytes view)
        self._host: collections.deque = collections.deque()     # (request, index, HWC uint8)
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
    def run(self, column, timeout: float | None = None):
        """Decode and infer one Arrow binary column; (outputs (n, k) or None, errors)."""
        import torch

        n = len(column)
        request = _Request(n, None)
        self.stats.add(requests=1)
        self.stats.last_used = time.time()
        offsets, data, valid = binary_buffers(column)
        device_rows, cpu_rows = [], []
        if self.decode_on_device and n:
            view = memoryview(data)
            for index in range(n):
                start, end = int(offsets[index]), int(offsets[index + 1])
                if valid[index] and device_decodable(view, start, end, self.preprocess):
                    device_rows.append(index)
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
                    (request, i, payload[int(offsets[i]) - first:int(offsets[i + 1]) - first])
                    for i in device_rows)
                self._cond.notify_all()
        if cpu_rows:
            values = [data[offsets[i]:offsets[i + 1]].tobytes() if valid[i] else None
                      for i in cpu_rows]
            self._to_cpu(request, cpu_rows, values)
        if not request.done.wait(timeout):
            raise TimeoutError(f"a batch of {n} rows was not done within {timeout} s "
                               "(the pool's batch_timeout_s)")
        self.stats.last_used = time.time()
        return request.outputs, request.errors

    def _to_cpu(self, request, indices: list[int], values: list) -> None:
        for lo in range(0, len(indices), CPU_CHUNK):
            chunk = indices[lo:lo + CPU_CHUNK]
            future = self.cpu_pool.submit(values[lo:lo + CPU_CHUNK], self.preprocess)
            future.add_done_callback(
                lambda done, chunk=chunk: self._cpu_done(request, chunk, done))

    def _cpu_done(self, request, indices: list[int], future) -> None:
        try:
            pixels, reasons = future.result()
        except Exception as exc:  # a worker died: these rows fail, the batch does not
            pixels, reasons = None, [f"decode failed: {type(exc).__name__}: {exc}"] * len(indices)
        decoded = []
        for position, index in enumerate(indices):
            if reasons[position] is not None:
                self._fail(request, index, reasons[position])
            else:
                decoded.append((request, index, pixels[position]))
        if decoded:
            with self._cond:
                self._host.extend(decoded)
                self._cond.notify_all()

    def _fail(self, request, index: int, reason: str) -> None:
        self.stats.add(decode_errors=1)
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()
        request.set_error(index, reason)

    # -- decode threads -----------------------------------------------------------------
    def _take(self):
        """Up to batch_size queued rows; waits briefly for more while rows are on their way."""
        with self._cond:
            while not (self._encoded or self._host):
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
        while True:
            encoded, host = self._take()
            try:
                items, batch = self._prepare(encoded, host)
            except Exception as exc:  # not the rows' fault alone: each row gets the reason
                for request, index, _ in encoded + host:
                    with self._cond:
                        self._pending += 1
                    self._fail(request, index, f"decode failed: {type(exc).__name__}: {exc}")
                continue
            if items:
                self._ready.put((items, batch))  # blocks when prefetch_batches are waiting

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
        with context, torch.inference_mode():
            images = decode_jpegs([data for _, _, data in encoded], self.device)
            rows = torch.empty((len(encoded) + len(host), 3, crop, crop), dtype=torch.uint8,
                               device=self.device)
            items, retry = [], []
            for (request, index, data), image in zip(encoded, images):
                if image is None:
                    retry.append((request, index, data))
                    continue
                try:
                    resize_crop_into(rows[len(items)], image, self.preprocess)
                except Exception:
                    retry.append((request, index, data))
                    continue
                items.append((request, index))
            if host:
                pixels = self._stage(np.stack([array for _, _, array in host]))
                rows[len(items):len(items) + len(host)].copy_(
                    pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2))
                items.extend((request, index) for request, index, _ in host)
            batch = normalize(rows[:len(items)], self.preprocess, self.runner.input_dtype,
                              self.runner.channels_last)
            if stream is not None:
                stream.synchronize()  # ready for the model's stream; the staging buffer free
        if retry:  # the device decoder refused these rows: the CPU decoder decides
            self.stats.add(device_decode_failures=len(retry))
            with self._cond:
                self._pending += len(retry)
            for request, index, data in retry:
                self._to_cpu(request, [index], [data.numpy().tobytes()])
        return items, batch

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
        while True:
            items, batch = self._ready.get()
            infer_split(self.runner.forward, items, batch, self.stats,
                        lambda inputs, lo, hi: inputs[lo:hi])
