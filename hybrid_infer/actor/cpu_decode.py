"""CPU decoding that no single GIL caps: PIL decode + resize + crop to uint8
(decode.decode_uint8_many) in worker processes, for the device pipeline's CPU rows.

The pool is sized from the CPUs Ray gave the actor, not the host's cores (on a 96-core
node of 8 GPU actors, each would otherwise start 95 processes), and a pool that breaks
(a worker killed, e.g. by the OOM killer) is replaced on the next use.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from hybrid_infer.decode import Preprocess, decode_uint8_many

log = logging.getLogger(__name__)

#: Rows per CPU decode task (amortises the hop to a worker process).
CPU_CHUNK = 8


def default_cpu_workers(assigned_cpus: float | None = None) -> int:
    """Decode workers for an actor: the CPUs Ray assigned it (rounded up), else the cores
    this process may use; less one for the actor's own threads, at least one."""
    if assigned_cpus is not None:
        return max(1, math.ceil(assigned_cpus) - 1)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class CpuDecodePool:
    """decode.decode_uint8_many on `workers` worker processes ("process": no shared GIL)
    or threads ("thread"). Started on first use; replaced when it breaks."""

    def __init__(self, workers: int | None = None, kind: str = "process"):
        if kind not in ("process", "thread"):
            raise ValueError(f"kind must be 'process' or 'thread', got {kind!r}")
        self.workers = workers or default_cpu_workers()
        self.kind = kind
        self.rebuilds = 0
        self._executor = None
        self._generation = 0
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
            return self._executor, self._generation

    def submit(self, values: list, preprocess: Preprocess) -> Future:
        """-> Future of ((n, crop, crop, 3) uint8, reasons)."""
        executor, generation = self._pool()
        try:
            future = executor.submit(decode_uint8_many, values, preprocess)
        except BrokenProcessPool:
            self.replace_broken(generation)
            executor, generation = self._pool()
            future = executor.submit(decode_uint8_many, values, preprocess)
        future.pool_generation = generation
        return future

    def replace_broken(self, generation: int) -> bool:
        """Drop the pool of `generation` (a future's `pool_generation`) if it is still the
        current one: the next submit starts a new one. False when it was already replaced."""
        with self._lock:
            if generation != self._generation or self._executor is None:
                return False
            broken, self._executor = self._executor, None
            self._generation += 1
            self.rebuilds += 1
        broken.shutdown(wait=False, cancel_futures=True)
        log.warning("a CPU decode worker died: its pool of %d %s(es) is replaced",
                    self.workers, self.kind)
        return True

    def warm_up(self) -> None:
        """Start every worker now (spawned processes take a moment to import)."""
        futures = [self.submit([], Preprocess()) for _ in range(self.workers)]
        for future in futures:
            future.result()

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (none for threads or before the first use)."""
        with self._lock:
            processes = getattr(self._executor, "_processes", None) or {}
            return list(processes)

    def shutdown(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
