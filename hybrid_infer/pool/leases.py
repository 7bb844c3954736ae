"""Who is using a pool now: the leases its manager's idle reaper respects.

A running job holds a lease on its pool: the driver takes one when infer() builds the
plan (so that tasks that start slowly find warm actors), and each Spark task's
PoolClient takes one when it starts mapping, renews it while it maps and releases it
at the end (transport/lease.py). A lease is an id with an expiry, so a task that dies
without releasing stops counting after its time to live. The pool is idle only
without leases, and its idleness counts from the end of the last one.

Anyone holding the pool's token can ask for a lease, so a lease is checked: its id is
a short string, its time to live a finite number of seconds up to MAX_LEASE_TTL_S
(NaN or infinity would pin the pool forever), and the book holds at most MAX_LEASES.
Expiry keeps a heap, so a call costs O(log n), not a scan of the whole table.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from typing import Callable

from hybrid_infer.errors import ConfigurationError

#: The longest a lease may last unless renewed (tasks renew every third of 15 s).
MAX_LEASE_TTL_S = 24 * 3600.0
#: The most leases held at once: a task holds one while it maps, a plan one.
MAX_LEASES = 10_000
#: The longest lease id accepted.
MAX_LEASE_ID_CHARS = 200


class LeaseRefused(ConfigurationError):
    """A lease request that is malformed, or one lease too many."""


def check_lease(lease_id, ttl_s) -> float:
    """`ttl_s` as a float; LeaseRefused says what is wrong with the request otherwise."""
    if not isinstance(lease_id, str) or not 0 < len(lease_id) <= MAX_LEASE_ID_CHARS:
        raise LeaseRefused(f"a lease id must be a string of 1 to {MAX_LEASE_ID_CHARS} "
                           f"characters, got {str(lease_id)[:50]!r}")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not (
            math.isfinite(ttl_s) and 0 < ttl_s <= MAX_LEASE_TTL_S):
        raise LeaseRefused(f"a lease's ttl_s must be a number of seconds in (0, "
                           f"{MAX_LEASE_TTL_S:g}], got {str(ttl_s)[:50]!r}")
    return float(ttl_s)


class LeaseBook:
    """Leases by id, each until its expiry; safe to use from several threads."""

    def __init__(self, clock: Callable[[], float] = time.time, max_leases: int = MAX_LEASES):
        self._clock = clock
        self._max_leases = max_leases
        self._expiries: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (expiry, id); stale entries skipped
        self._lock = threading.Lock()
        #: when the last lease ended (released, or expired): idleness counts from here
        self.last_end = clock()

    def hold(self, lease_id: str, ttl_s: float) -> bool:
        """Take or renew `lease_id` for `ttl_s` seconds; True when it is a new lease.
        LeaseRefused for a malformed request, or a new lease past max_leases."""
        ttl_s = check_lease(lease_id, ttl_s)
        with self._lock:
            self._expire_locked()
            new = lease_id not in self._expiries
            if new and len(self._expiries) >= self._max_leases:
                raise LeaseRefused(
                    f"this pool already holds {len(self._expiries)} leases (MAX_LEASES in "
                    "hybrid_infer/pool/leases.py): release leases, or wait for them to expire")
            expiry = self._clock() + ttl_s
            self._expiries[lease_id] = expiry
            heapq.heappush(self._heap, (expiry, lease_id))
            if len(self._heap) > 4 * len(self._expiries) + 64:  # renewals left stale entries
                self._heap = [(e, i) for i, e in self._expiries.items()]
                heapq.heapify(self._heap)
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
        while self._heap and self._heap[0][0] <= now:
            expiry, lease_id = heapq.heappop(self._heap)
            if self._expiries.get(lease_id) == expiry:  # not renewed since
                del self._expiries[lease_id]
                self.last_end = max(self.last_end, expiry)
