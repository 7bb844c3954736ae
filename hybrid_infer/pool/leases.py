"""Who is using a pool now: the leases its manager's idle reaper respects.

A running job holds a lease on its pool: the driver takes one when infer() builds the
plan (so that tasks that start slowly find warm actors), and each Spark task's
PoolClient takes one when it starts mapping, renews it while it maps and releases it
at the end (transport/lease.py). A lease is an id with an expiry, so a task that dies
without releasing stops counting after its time to live. The pool is idle only
without leases, and its idleness counts from the end of the last one.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class LeaseBook:
    """Leases by id, each until its expiry; safe to use from several threads."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._expiries: dict[str, float] = {}
        self._lock = threading.Lock()
        #: when the last lease ended (released, or expired): idleness counts from here
        self.last_end = clock()

    def hold(self, lease_id: str, ttl_s: float) -> bool:
        """Take or renew `lease_id` for `ttl_s` seconds; True when it is a new lease."""
        with self._lock:
            self._expire_locked()
            new = lease_id not in self._expiries
            self._expiries[lease_id] = self._clock() + ttl_s
            return new

    def release(self, lease_id: str) -> None:
        with self._lock:
            if self._expiries.pop(lease_id, None) is not None:
                self.last_end = max(self.last_end, self._clock())

    def end_plans(self, prefix: str) -> None:
        """End the leases whose id starts with `prefix` (a driver's plan leases: their
        tasks now hold leases of their own)."""
        with self._lock:
            for lease_id in [i for i in self._expiries if i.startswith(prefix)]:
                del self._expiries[lease_id]
                self.last_end = max(self.last_end, self._clock())

    def active(self) -> int:
        """How many leases are held now (expired ones end here, at their expiry)."""
        with self._lock:
            self._expire_locked()
            return len(self._expiries)

    def _expire_locked(self) -> None:
        now = self._clock()
        for lease_id, expiry in list(self._expiries.items()):
            if expiry <= now:
                del self._expiries[lease_id]
                self.last_end = max(self.last_end, expiry)
