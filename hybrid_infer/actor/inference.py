"""InferenceActor: a long-lived Ray actor holding one model and its pipeline.

It builds its module around the object store's copy of the weights (no file read, no
pickled nn.Module), then serves `infer` calls: one Arrow batch of image bytes in, one
Arrow batch of `prediction` / `error` (/ `top_k`) out, same rows, same order.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from hybrid_infer.actor.service import PoolActor
from hybrid_infer.decode import ArrayDecoder, ImageDecoder, Preprocess
from hybrid_infer.output import result_batch


@dataclass(frozen=True)
class RequestOptions:
    """Per-job choices that do not change the loaded model."""

    preprocess: Preprocess = Preprocess()
    top_k: int = 0
    #: Non-image inputs: rows are numeric arrays reshaped to this shape, not decoded.
    input_shape: tuple[int, ...] | None = None
    #: One name per class: top-k results then carry the classes' names.
    class_names: tuple[str, ...] | None = None


class InferenceActor(PoolActor):
    """Wrapped with ray.remote by the registry; plain class so it can be read and tested.
    Its Flight service, ping and status come from PoolActor."""

    def __init__(self, spec, weights, settings, pool_name: str, index: int):
        import torch

        from hybrid_infer.actor.pipeline import InferencePipeline
        from hybrid_infer.actor.runner import ModelRunner
        from hybrid_infer.weights import module_from_arrays

        started = time.time()
        threads = settings.torch_threads or max(1, (os.cpu_count() or 1))
        torch.set_num_threads(threads)
        self.pool_name = pool_name
        self.index = index
        self.settings = settings
        # `weights` arrives resolved by Ray: read-only arrays over the node's shared copy.
        self._weights = weights
        module = module_from_arrays(spec, weights)
        self.runner = ModelRunner(
            module, device=settings.device, precision=settings.precision,
            channels_last=settings.channels_last, max_batch_bytes=settings.max_batch_bytes,
            optimize=settings.optimize, example_shape=(settings.batch_size, 3, 224, 224),
            embedding_layer=settings.embedding_layer)
        self.streams, stream_threads = settings.stream_layout(self.runner.device, threads)
        self.pipeline = InferencePipeline(
            self.runner, settings.batch_size, settings.decode_threads, streams=self.streams,
            stream_setup=lambda: torch.set_num_threads(stream_threads),
            # torch's thread count is per thread (OpenMP): decoding's few tensor ops run
            # single-threaded instead of contending with the model's threads.
            decode_setup=lambda: torch.set_num_threads(1))
        self.stream_threads = stream_threads
        self._decoders: dict = {}
        self.model_loads = 1
        self.load_seconds = time.time() - started
        self.started_at = started

    def infer(self, batch: pa.RecordBatch, options: RequestOptions | None = None):
        """Predict for every row of a one-column batch of bytes; same row count back."""
        options = options or RequestOptions()
        decoder = self._decoder(options)
        values = batch.column(0).to_pylist()
        outputs, errors = self.pipeline.run(values, decoder, self.settings.batch_timeout_s)
        if outputs is None:
            outputs = np.zeros((len(values), 0), dtype=np.float32)
        return result_batch(outputs, errors, options.top_k, options.class_names)

    def _decoder(self, options: RequestOptions):
        key = options.input_shape or options.preprocess
        if key not in self._decoders:
            self._decoders[key] = (ArrayDecoder(options.input_shape) if options.input_shape
                                   else ImageDecoder(options.preprocess))
        return self._decoders[key]

    def stats(self) -> dict:
        stats = self.pipeline.stats
        return {
            "device": self.runner.device,
            "streams": self.streams,
            "threads_per_stream": self.stream_threads,
            "optimize": self.runner.optimize,
            "optimize_seconds": round(self.runner.optimize_seconds, 3),
            "requests": stats.requests,
            "batches": stats.batches,
            "rows": stats.rows,
            "decode_errors": stats.decode_errors,
            "split_retries": stats.split_retries,
            "model_seconds": round(stats.model_seconds, 3),
            "last_used": stats.last_used,
        }

    def weight_storage(self) -> dict:
        """Where the module's CPU weights live: the mapped files holding their memory.

        Used to prove sharing: object-store-backed weights sit in the plasma store's
        shared mapping, not in this process's private heap.
        """
        regions = _memory_regions()
        backing: dict[str, int] = {}
        params = list(self.runner.module.parameters())
        for tensor in params:
            if tensor.device.type != "cpu":
                backing["<device>"] = backing.get("<device>", 0) + tensor.nbytes
                continue
            backing_file = _region_of(regions, tensor.data_ptr())
            backing[backing_file] = backing.get(backing_file, 0) + tensor.nbytes
        return {"pid": os.getpid(), "backing": backing,
                "param_bytes": sum(t.nbytes for t in params)}


def _memory_regions() -> list[tuple[int, int, str]]:
    regions = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            start, end = (int(x, 16) for x in parts[0].split("-"))
            regions.append((start, end, parts[5] if len(parts) > 5 else "<anonymous>"))
    return regions


def _region_of(regions, address: int) -> str:
    for start, end, name in regions:
        if start <= address < end:
            return name
    return "<unmapped>"
