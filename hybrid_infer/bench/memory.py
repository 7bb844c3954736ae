"""Peak resident memory of a whole process tree, sampled while a contender runs.

A contender's tree holds everything it started: the Spark JVM and its Python workers,
the Ray head (GCS, raylet, object store), Ray workers and actors, RayDP's JVMs. RSS
counts shared pages (the object store, mapped libraries) once per process; PSS splits
them between the processes sharing them, so the PSS sum is what the tree really uses.
Both peaks are reported.
"""

from __future__ import annotations

import threading

import psutil


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kind(process: psutil.Process) -> str:
    """What a process is, for the breakdown: Ray sets titles like ray::InferenceActor."""
    name = process.name()
    if name.startswith("ray::"):
        return name.split(".")[0]
    cmdline = " ".join(process.cmdline()[:4])
    if "java" in name:
        return "jvm (Spark/RayDP)"
    if "pyspark.daemon" in cmdline or "pyspark/daemon" in cmdline:
        return "spark python workers"
    if "default_worker.py" in cmdline:
        return "ray idle workers"
    return name


def sample(pid: int) -> tuple[int, int, int, dict]:
    """(sum of PSS, sum of RSS, processes, PSS by kind) for `pid` and its descendants."""
    pss = rss = count = 0
    by_kind: dict[str, int] = {}
    for process in tree(pid):
        try:
            info = process.memory_full_info()
            label = kind(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += info.rss
        process_pss = getattr(info, "pss", info.rss)
        pss += process_pss
        by_kind[label] = by_kind.get(label, 0) + process_pss
        count += 1
    return pss, rss, count, by_kind


class PeakMemory:
    """Samples a process tree every `interval_s` in a background thread; keeps the peaks."""

    def __init__(self, pid: int, interval_s: float = 1.0):
        self.pid = pid
        self.interval_s = interval_s
        self.peak_pss = self.peak_rss = self.peak_processes = 0
        self.breakdown: dict[str, int] = {}  # PSS by process kind at the PSS peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pss, rss, count, by_kind = sample(self.pid)
            if pss > self.peak_pss:
                self.peak_pss, self.breakdown = pss, by_kind
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_processes = max(self.peak_processes, count)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def as_dict(self) -> dict:
        mib = 1 << 20
        return {"peak_pss_mib": round(self.peak_pss / mib, 1),
                "peak_rss_mib": round(self.peak_rss / mib, 1),
                "peak_processes": self.peak_processes,
                "pss_mib_by_kind_at_peak": {k: round(v / mib, 1) for k, v in sorted(
                    self.breakdown.items(), key=lambda kv: -kv[1])}}
