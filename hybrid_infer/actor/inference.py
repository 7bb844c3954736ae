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
    #: The caller's ClientSettings.batch_timeout_s: the actor gives up on a batch then.
    batch_timeout_s: float = 600.0
    #: The job's JobOptions.job_id: the actor counts the rows it answers under it.
    job_id: str | None = None


class InferenceActor(PoolActor):
    """Wrapped with ray.remote by the registry; plain class so it can be read and tested.
    Its Flight service, ping and status come from PoolActor."""

    def __init__(self, spec, weights, settings, pool_name: str, index: int,
                 node_threads: int | None = None):
        import torch

        from hybrid_infer.actor.pipeline import InferencePipeline, PipelineStats
        from hybrid_infer.actor.resources import Granted, check_gpu_usable, default_torch_threads
        from hybrid_infer.actor.runner import ModelRunner, resolve_device
        from hybrid_infer.weights import module_from_arrays

        started = time.time()
        granted = Granted.current()
        # Ray gave a GPU that torch cannot use: fail now, not run silently on CPU.
        check_gpu_usable(settings.device, granted.gpu_ids, torch.cuda.is_available(),
                         torch.__version__, torch.version.cuda,
                         os.environ.get("CUDA_VISIBLE_DEVICES"))
        # Asked for; else this actor's share of its node's cores (a CPU pool sized by
        # default); else the CPUs Ray assigned it (a GPU actor's, or ones asked for).
        threads = settings.torch_threads or default_torch_threads(granted.cpus, node_threads)
        torch.set_num_threads(threads)
        self.torch_threads = torch.get_num_threads()  # what torch took, for status()
        self.pool_name = pool_name
        self.index = index
        # None-valued defaults (batch size, precision, channels_last) resolved per device.
        settings = settings.for_device(resolve_device(settings.device))
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
        self._pipeline_stats = PipelineStats()  # shared by the CPU and device pipelines
        self.pipeline = InferencePipeline(
            self.runner, settings.batch_size, settings.decode_threads, streams=self.streams,
            stream_setup=lambda: torch.set_num_threads(stream_threads),
            # torch's thread count is per thread (OpenMP): decoding's few tensor ops run
            # single-threaded instead of contending with the model's threads.
            decode_setup=lambda: torch.set_num_threads(1), stats=self._pipeline_stats)
        self.stream_threads = stream_threads
        #: "gpu": JPEGs decoded on the device; "cpu-uint8": PIL in worker processes, uint8
        #: normalised on the GPU; "cpu": today's decode threads (CPU actors' default).
        self.decode = _decode_path(settings.decode, self.runner.device)
        self._cpu_pool = None
        if self.decode != "cpu":
            from hybrid_infer.actor.gpu_decode import CpuDecodePool

            self._cpu_pool = CpuDecodePool()
            if self.decode == "cpu-uint8":
                self._cpu_pool.warm_up()
        self._decoders: dict = {}
        self._device_pipelines: dict = {}
        self.model_loads = 1
        self.load_seconds = time.time() - started
        self.started_at = started

    def infer(self, batch: pa.RecordBatch, options: RequestOptions | None = None):
        """Predict for every row of a one-column batch of bytes; same row count back."""
        options = options or RequestOptions()
        column = batch.column(0)
        if self.decode != "cpu" and options.input_shape is None and (
                pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
            pipeline = self._device_pipeline(options.preprocess)
            outputs, errors = pipeline.run(column, options.batch_timeout_s)
        else:
            values = column.to_pylist()
            outputs, errors = self.pipeline.run(values, self._decoder(options),
                                                options.batch_timeout_s)
        if outputs is None:
            outputs = np.zeros((len(errors), 0), dtype=np.float32)
        return result_batch(outputs, errors, options.top_k, options.class_names)

    def _device_pipeline(self, preprocess: Preprocess):
        """One device pipeline per preprocessing (its crop size sets the batch's shape)."""
        pipeline = self._device_pipelines.get(preprocess)
        if pipeline is None:
            from hybrid_infer.actor.gpu_decode import DevicePipeline

            pipeline = self._device_pipelines.setdefault(preprocess, DevicePipeline(
                self.runner, self.settings.batch_size, preprocess, self._cpu_pool,
                decode_on_device=self.decode == "gpu", stats=self._pipeline_stats))
        return pipeline

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
            "decode": self.decode,
            "batch_size": self.settings.batch_size,
            "precision": self.settings.precision,
            "torch_threads": self.torch_threads,
            "streams": self.streams,
            "threads_per_stream": self.stream_threads,
            "optimize": self.runner.optimize,
            "optimize_seconds": round(self.runner.optimize_seconds, 3),
            "requests": stats.requests,
            "batches": stats.batches,
            "rows": stats.rows,
            "decode_errors": stats.decode_errors,
            "split_retries": stats.split_retries,
            "cpu_decoded_rows": stats.cpu_decoded_rows,
            "device_decode_failures": stats.device_decode_failures,
            "model_seconds": round(stats.model_seconds, 3),
            "last_used": stats.last_used,
        }


def _decode_path(decode: str, device: str) -> str:
    """Which decode path an actor on `device` runs for PoolSettings.decode."""
    if decode == "gpu" or (decode == "auto" and device != "cpu"):
        return "gpu"
    return "cpu-uint8" if device != "cpu" else "cpu"

