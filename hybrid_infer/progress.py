"""Progress of a running Spark job: rows done / total, images/s, ETA.

Spark knows how many tasks of the running stages finished; with the row count known up
front that gives an estimate of rows done, printed every few seconds on one line.
"""

from __future__ import annotations

import sys
import threading
import time


class SparkProgress:
    def __init__(self, spark, total_rows: int, *, interval_s: float = 2.0, stream=None):
        self._tracker = spark.sparkContext.statusTracker()
        self._total = total_rows
        self._interval = interval_s
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = time.time()
        self._printed = False

    def __enter__(self):
        self._started = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self._printed:
            self._stream.write("\n")

    def fraction_done(self) -> float:
        done = total = 0
        for stage_id in self._tracker.getActiveStageIds():
            info = self._tracker.getStageInfo(stage_id)
            if info is not None:
                done += info.numCompletedTasks
                total += info.numTasks
        return done / total if total else 0.0

    def line(self) -> str:
        elapsed = time.time() - self._started
        rows = int(self._total * self.fraction_done())
        rate = rows / elapsed if elapsed > 0 else 0.0
        eta = f"{(self._total - rows) / rate:.0f} s" if rate > 0 else "?"
        return f"rows {rows}/{self._total}  {rate:.1f} images/s  ETA {eta}"

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._stream.write("\r" + self.line())
            self._stream.flush()
            self._printed = True
