"""Rows an actor answered, per job: what a driver's progress line reads from the pool.

A warm pool serves several jobs, at once or one after another, so a pool-wide row
counter cannot tell one job's progress; each job's streams carry its own id (in their
options, once per stream) and the actor counts the rows it answered under that id. Only
the most recent jobs are kept: a long-lived actor must not grow with every job it serves.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class JobRowCounter:
    def __init__(self, keep_jobs: int = 256):
        self._rows: OrderedDict[str, int] = OrderedDict()
        self._keep = keep_jobs
        self._lock = threading.Lock()  # Flight answers batches on many threads

    def add(self, job_id: str | None, rows: int) -> None:
        if job_id is None:
            return
        with self._lock:
            self._rows[job_id] = self._rows.pop(job_id, 0) + rows  # most recent last
            while len(self._rows) > self._keep:
                self._rows.popitem(last=False)

    def rows(self, job_id: str) -> int:
        with self._lock:
            return self._rows.get(job_id, 0)
