"""InferenceActor: a long-lived Ray actor holding one model and its pipeline.

It builds its module around the object store's copy of the weights (no file read, no
pickled nn.Module), then serves `infer` calls: one Arrow batch of image bytes in, one
Arrow batch of `prediction` / `error` (/ `top_k`) out, same rows, same order.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pyarrow as pa

from hybrid_infer.actor.batching import DecodePath, DeviceHealth, PipelineStats
from hybrid_infer.actor.service import PoolActor
from hybrid_infer.decode import ArrayDecoder, TableImageDecoder
from hybrid_infer.output import result_batch
from hybrid_infer.servable import resolve_payload
from hybrid_infer.transport.protocol import RequestOptions

log = logging.getLogger(__name__)


class InferenceActor(PoolActor):
    """Wrapped with ray.remote by the registry; plain class so it can be read and tested.
    Its Flight service, ping and status come from PoolActor."""

    def __init__(self, spec, weights, settings, pool_name: str, index: int,
                 node_threads: int | None = None):
        import torch

        from hybrid_infer.actor.pipeline import InferencePipeline
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
        # read-only arrays over the node's shared copy (from the object store)
        weights = self._weights = resolve_payload(weights)
        module = module_from_arrays(spec, weights)
        self.runner = ModelRunner(
            module, device=settings.device, precision=settings.precision,
            channels_last=settings.channels_last, max_batch_bytes=settings.max_batch_bytes,
            optimize=settings.optimize, example_shape=(settings.batch_size, 3, 224, 224),
            embedding_layer=settings.embedding_layer)
        self.streams, stream_threads = settings.stream_layout(self.runner.device, threads)
        self._pipeline_stats = PipelineStats()  # shared by the CPU and device pipelines
        # Shared too: one CUDA error fails the whole actor; in Ray (Ray assigned it CPUs)
        # the actor then exits, so its batches are resent and the pool replaces it.
        self.health = DeviceHealth(exit_for_replacement if granted.cpus is not None else None)
        self.pipeline = InferencePipeline(
            self.runner, settings.batch_size, settings.decode_threads, streams=self.streams,
            stream_setup=lambda: torch.set_num_threads(stream_threads),
            # torch's thread count is per thread (OpenMP): decoding's few tensor ops run
            # single-threaded instead of contending with the model's threads.
            decode_setup=lambda: torch.set_num_threads(1), stats=self._pipeline_stats,
            health=self.health)
        self.stream_threads = stream_threads
        self._start_decode_path(settings.decode, granted.cpus)
        self._decoders: dict = {}
        self._device_pipelines: dict = {}
        self._device_pipelines_lock = threading.Lock()
        self.model_loads = 1
        self.load_seconds = time.time() - started
        self.started_at = started

    def _start_decode_path(self, decode: str, assigned_cpus: float | None) -> None:
        """The decode path (DecodePath) for ActorSettings.decode on this device. The device
        path first decodes a tiny JPEG there: when no backend can (a torchvision without
        nvJPEG, decoders removed), JPEGs are decoded on the CPU instead."""
        from hybrid_infer.actor.cpu_decode import CpuDecodePool, default_cpu_workers
        from hybrid_infer.actor.device_decode import JpegDecoder

        self.decode = DecodePath.for_setting(decode, self.runner.device)
        self._jpeg_decoder = None
        if self.decode is DecodePath.DEVICE:
            self._jpeg_decoder, refused = JpegDecoder.choose(self.runner.device)
            if self._jpeg_decoder is None:
                self.decode = DecodePath.CPU_PROCESSES
                log.warning("no JPEG decoder works on %s (%s): this actor decodes on the CPU",
                            self.runner.device, "; ".join(f"{k}: {v}" for k, v in refused.items()))
        self._cpu_pool = None
        if self.decode is not DecodePath.THREADS:
            # Worker processes from the CPUs Ray gave this actor, not the host's cores.
            self._cpu_pool = CpuDecodePool(default_cpu_workers(assigned_cpus))
            if self.decode is DecodePath.CPU_PROCESSES:
                self._cpu_pool.warm_up()

    def infer(self, batch: pa.RecordBatch, options: RequestOptions | None = None,
              stream_started: float | None = None):
        """Predict for every row of a one-column batch of bytes; same row count back.
        `stream_started` (time.monotonic()) ranks its rows: the oldest stream's first."""
        options = options or RequestOptions()
        column = batch.column(0)
        outputs, errors = self._pipeline_for(options, column.type).run(
            column, self._decoder(options), options.batch_timeout_s, stream_started)
        if outputs is None:
            outputs = np.zeros((len(errors), 0), dtype=np.float32)
        return result_batch(outputs, errors, options.top_k, options.class_names)

    def ping(self) -> bool:
        """Fails once the device failed: the pool's heal then replaces this actor."""
        self.health.check()
        return True

    def _pipeline_for(self, options: RequestOptions, column_type):
        """The decode threads' pipeline, or for image bytes on the device paths the
        device pipeline of the request's preprocessing (its crop sets the batch's shape)."""
        if self.decode is DecodePath.THREADS or options.input_shape is not None or not (
                pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type)):
            return self.pipeline
        with self._device_pipelines_lock:  # concurrent first calls build one pipeline
            pipeline = self._device_pipelines.get(options.preprocess)
            if pipeline is None:
                from hybrid_infer.actor.device_pipeline import DevicePipeline

                pipeline = self._device_pipelines[options.preprocess] = DevicePipeline(
                    self.runner, self.settings.batch_size, options.preprocess,
                    self._cpu_pool, jpeg_decoder=self._jpeg_decoder,
                    stats=self._pipeline_stats, health=self.health)
            return pipeline

    def close(self) -> None:
        """Stop the pipelines' threads and the CPU decode workers."""
        self.pipeline.close()
        with self._device_pipelines_lock:
            for pipeline in self._device_pipelines.values():
                pipeline.close()
        if self._cpu_pool is not None:
            self._cpu_pool.shutdown()

    def _decoder(self, options: RequestOptions):
        key = options.input_shape or options.preprocess
        if key not in self._decoders:
            self._decoders[key] = (ArrayDecoder(options.input_shape) if options.input_shape
                                   else TableImageDecoder(options.preprocess))
        return self._decoders[key]

    def stats(self) -> dict:
        stats = self.pipeline.stats
        return {
            "device": self.runner.device,
            "decode": self.decode.value,
            "jpeg_decoder": self._jpeg_decoder.backend if self._jpeg_decoder else None,
            "device_failed": self.health.failure is not None,
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
            "device_decode_calls": stats.device_decode_calls,
            "out_of_memory_reroutes": stats.out_of_memory_reroutes,
            "cpu_pool_rebuilds": stats.cpu_pool_rebuilds,
            "model_seconds": round(stats.model_seconds, 3),
            "last_used": stats.last_used,
        }


#: The exit status of an actor process whose device failed.
EXIT_DEVICE_FAILED = 75


def exit_for_replacement(exc: BaseException) -> None:
    """End this Ray actor's process after an unrecoverable device error: Ray reports the
    actor dead, the clients resend the batches it had not answered to the pool's other
    actors, and the manager's heal replaces it. (Answering rows with errors instead would
    look healthy while the device is broken.)"""
    log.error("exiting (status %d) so that the pool replaces this actor: %s: %s",
              EXIT_DEVICE_FAILED, type(exc).__name__, exc)
    logging.shutdown()
    os._exit(EXIT_DEVICE_FAILED)
