"""When a pool changes size: pure policies with an injectable clock, no Ray.

The manager's control loop (pool/manager.py) samples its actors every few seconds and
asks these policies what to do; it alone touches Ray. Three decisions:

- Grow (`LoadPolicy`): like Ray Data's autoscaling actor pool, a pool whose actors
  stayed busy (clients keeping their in-flight windows full) for `up_after_s` gains
  one actor, up to its ceiling (max_actors, or what the cluster can place: one per GPU,
  one per node for a CPU pool sized by default).
- Shrink back (`LoadPolicy`): a pool grown above its busy size (num_actors) whose
  utilisation stayed below `down_below` for `down_after_s` gives one actor back. Each
  change restarts both windows, so a pool never grows and shrinks in one breath.
- Scale down when idle (`IdlePolicy`): no lease and no work for idle_timeout_s.

Utilisation is the fraction of wall time an actor held at least one request batch
(transport/busy.py), averaged over the pool's actors between two samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class LoadSample:
    """What the control loop saw at one moment."""

    actors: int
    #: mean busy fraction of the actors since the previous sample, in [0, 1]
    utilization: float
    #: leases held now (running jobs)
    leases: int


@dataclass
class LoadPolicy:
    """Grow a busy pool by one actor, shrink an under-used grown pool by one.

    floor: the busy size (num_actors), below which this policy never shrinks (the idle
    policy takes the pool further down, to min_actors). ceiling: the most actors it
    may grow to (None: no growth).
    """

    floor: int
    ceiling: int | None
    up_at: float = 0.85
    up_after_s: float = 6.0
    down_below: float = 0.5
    down_after_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _busy_since: float | None = field(default=None, init=False)
    _quiet_since: float | None = field(default=None, init=False)

    def decide(self, sample: LoadSample) -> int:
        """The size the pool should have now: sample.actors, or one more or one less."""
        now = self.clock()
        busy = sample.leases > 0 and sample.utilization >= self.up_at
        quiet = sample.utilization < self.down_below
        self._busy_since = (self._busy_since or now) if busy else None
        self._quiet_since = (self._quiet_since or now) if quiet else None
        if (busy and self.ceiling is not None and sample.actors < self.ceiling
                and now - self._busy_since >= self.up_after_s):
            return self._changed(sample.actors + 1)
        if (quiet and sample.actors > self.floor
                and now - self._quiet_since >= self.down_after_s):
            return self._changed(sample.actors - 1)
        return sample.actors

    def changed(self) -> None:
        """The pool changed size (here or elsewhere): both windows start again."""
        self._busy_since = self._quiet_since = None

    def _changed(self, size: int) -> int:
        self.changed()
        return size


def idle_for(now: float, last_used: float, last_change: float, last_lease_end: float) -> float:
    """Seconds since anything happened on the pool: work, a size change, a lease's end."""
    return now - max(last_used, last_change, last_lease_end)


@dataclass(frozen=True)
class IdlePolicy:
    """Scale an idle pool down to min_actors after idle_timeout_s (0: never)."""

    idle_timeout_s: float
    min_actors: int

    def should_scale_down(self, *, actors: int, leases: int, idle_s: float) -> bool:
        return (self.idle_timeout_s > 0 and actors > self.min_actors and leases == 0
                and idle_s > self.idle_timeout_s)

    def check_period_s(self) -> float:
        """How often the reaper looks: often enough to act within about a quarter of the
        timeout, never more than every 30 s."""
        return min(30.0, max(1.0, self.idle_timeout_s / 4))
