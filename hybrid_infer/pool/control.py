"""The pool manager's control loop: it follows the actors' load and idleness, and
answers other pools that need room (a mixin of PoolManager, pool/manager.py).

Every few seconds it samples the actors (`status()`: busy seconds, batches held, last
use) and asks the pure policies of pool/scaling.py what to do: grow by one actor
(only when the cluster has room now, idle pools giving way included), retire one of a
pool grown past its busy size, or scale an idle pool down to min_actors. Other pools'
managers call `usage()` and `yield_actors()` (pool/pressure.py).

It relies on the manager's state (`_set`, `_lock`, `_leases`, `placement`, `key`) and
mechanism (`_scale_locked`, `_to_remove`, `_kill_and_wait`, `_resources_per_actor`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from hybrid_infer.pool.actor_set import Member
from hybrid_infer.pool.placement import cpu_nodes
from hybrid_infer.pool.pressure import PoolUsage, free_for, ray_resources
from hybrid_infer.pool.scaling import LoadSample, idle_for

log = logging.getLogger("hybrid_infer.pool.manager")  # operators read one logger

#: how often the control loop samples the actors' load while jobs hold leases
LOAD_PERIOD_S = 2.0
#: how long a sampled actor may take to answer before it counts as silent (busy)
SAMPLE_TIMEOUT_S = 30.0
#: how long a retired actor keeps serving: clients learn the new actor list when they
#: renew their lease (every 5 s); a batch sent to it later is resent elsewhere
DRAIN_S = 12.0


@dataclass
class _Sample:
    """One look at every actor: their status, and who did not answer."""

    statuses: dict = field(default_factory=dict)  # index -> the actor's status()
    dead: set = field(default_factory=set)  # indices whose actor is gone
    silent: set = field(default_factory=set)  # indices that did not answer in time


class ControlLoop:
    # -- the control loop: load, growth, shrinking, idleness --------------------------
    def _control_loop(self) -> None:
        while not self._stopping:
            busy = self._leases.active() > 0 or len(self._set) > self._busy_size()
            self._wake.wait(LOAD_PERIOD_S if busy else self._idle.check_period_s())
            self._wake.clear()
            if self._stopping or not self.is_started():
                continue
            try:
                if self._leases.active() or len(self._set) > self._busy_size():
                    self._follow_load()
                else:
                    self._reap_if_idle(timeout=5.0)
            except Exception:  # never let one bad round end the loop
                log.exception("pool %s: the control loop's check failed; trying again",
                              self.key.name)

    def _sample(self, timeout: float) -> _Sample:
        """Every actor's status. A dead actor counts as idle (the next job heals it);
        one that does not answer in `timeout` may be busy."""
        import ray

        sample = _Sample()
        refs = {}
        for member in self._set.members():
            try:
                refs[member.actor.status.remote()] = member.index
            except Exception as exc:  # a dead actor's handle may refuse the call itself
                self._note_dead(sample, member.index, exc)
        ready, waiting = (ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
                          if refs else ([], []))
        sample.silent = {refs[ref] for ref in waiting}
        for ref in ready:
            try:
                sample.statuses[refs[ref]] = ray.get(ref)
            except Exception as exc:
                self._note_dead(sample, refs[ref], exc)
        if sample.statuses:
            self._last_used = max([self._last_used] + [s.get("last_used", 0.0)
                                                       for s in sample.statuses.values()])
        return sample

    def _note_dead(self, sample: _Sample, index: int, exc: Exception) -> None:
        sample.dead.add(index)
        if index not in self._said_idle:
            self._said_idle.add(index)
            log.warning("pool %s: actor %d counts as idle: %s", self.key.name, index,
                        _cause(exc))

    def _utilization(self, sample: _Sample) -> float:
        """Mean busy fraction of the actors since their previous sample."""
        now = time.monotonic()
        fractions = []
        for index, status in sample.statuses.items():
            busy_s = status.get("busy_s", 0.0)
            seen = self._busy_seen.get(index)
            if seen is not None and now > seen[0]:
                fractions.append(min(1.0, max(0.0, (busy_s - seen[1]) / (now - seen[0]))))
            self._busy_seen[index] = (now, busy_s)
        return sum(fractions) / len(fractions) if fractions else 0.0

    def _follow_load(self) -> None:
        """Grow a pool whose actors stay busy, shrink one grown past its busy size that
        is no longer (pool/scaling.py decides)."""
        sample = self._sample(timeout=SAMPLE_TIMEOUT_S)
        self._load.floor, self._load.ceiling = self._busy_size(), self._ceiling()
        size = len(self._set)
        target = self._load.decide(LoadSample(size, self._utilization(sample),
                                              self._leases.active()))
        if target == size or not self._lock.acquire(blocking=False):
            return
        try:
            if target > size and len(self._set) == size:
                self._grow_by_one(target)
            elif target < size and len(self._set) == size:
                self._note_resize(size, target, "load fell")
                self._retire(self._to_remove(size - target, sample.dead))
                log.info("pool %s scaled down from %d to %d actor(s): its load fell",
                         self.key.name, size, target)
        finally:
            self._lock.release()

    def _grow_by_one(self, target: int) -> None:
        """Add an actor when the cluster has room for it now (idle pools giving way
        included); growth never waits for resources."""
        import ray

        per_actor = self._resources_per_actor()
        free_for(self.key.name, per_actor, 1)
        wanted = ray_resources(per_actor)
        available = ray.available_resources()
        if any(amount > available.get(name, 0.0) + 1e-9 for name, amount in wanted.items()
               if amount):
            log.debug("pool %s is busy but the cluster has no room for another actor",
                      self.key.name)
            return
        started = time.perf_counter()
        self._scale_locked(target, why="busy")
        log.info("pool %s grew from %d to %d actor(s) in %.1f s: its actors stayed busy",
                 self.key.name, target - 1, len(self._set), time.perf_counter() - started)

    def _retire(self, members: list[Member]) -> None:
        """Stop listing these actors now, kill them once clients had time to learn it."""
        def drain_then_kill():
            time.sleep(DRAIN_S)
            self._kill_and_wait(members)

        self._load.changed()
        self._last_change = time.time()
        threading.Thread(target=drain_then_kill, daemon=True, name="pool-retire").start()

    def _ceiling(self) -> int:
        """The most actors load may grow the pool to: max_actors; else the num_actors a
        user gave; else what the cluster holds: one per GPU, one per node for a CPU pool
        on its nodes' cores, or as many as its CPUs fit."""
        busy = self._busy_size()
        if self.placement.max_actors is not None:
            return self.placement.max_actors
        if self._sized_by_user:
            return busy
        per_actor = self._resources_per_actor()
        if per_actor["num_gpus"]:
            return max(busy, int(cluster_gpus() // per_actor["num_gpus"]))
        if self._on_node_cores(per_actor):
            return max(busy, len(cpu_nodes()))
        return max(busy, int(_cluster_cpus() // max(per_actor["num_cpus"], 1e-9)))

    def _reap_if_idle(self, timeout: float = 30.0) -> bool:
        """Scale down to min_actors when the pool has been idle past its timeout with no
        lease held; True if it scaled down. Dead actors go first; an actor that does not
        answer in `timeout` may be busy: not idle then."""
        if len(self._set) <= self.placement.min_actors or self._leases.active():
            return False
        sample = self._sample(timeout)
        if sample.silent:
            log.info("pool %s: %d actor(s) did not report within %.0f s: not idle",
                     self.key.name, len(sample.silent), timeout)
            return False
        # A start, scale or heal in progress holds the lock: that is not idleness.
        if not self.is_started() or not self._lock.acquire(blocking=False):
            return False
        try:
            idle = idle_for(time.time(), self._last_used, self._last_change,
                            self._leases.last_end)
            if self._stopping or not self._idle.should_scale_down(
                    actors=len(self._set), leases=self._leases.active(), idle_s=idle):
                return False
            before = len(self._set)
            self._scale_locked(self.placement.min_actors, dead=sample.dead, why="idle")
            log.info("pool %s idle for %.0f s with no lease (idle_timeout_s=%s): scaled "
                     "down from %d to %d actor(s); it scales back up when a job arrives",
                     self.key.name, idle, self.placement.idle_timeout_s, before,
                     len(self._set))
            return True
        finally:
            self._lock.release()

    # -- giving way to other pools (pool/pressure.py) ---------------------------------
    def usage(self) -> PoolUsage:
        """What this pool holds, and whether it is idle, for a pool that needs room."""
        sample = self._sample(timeout=3.0)
        held = sum(status.get("held_batches", 0) for status in sample.statuses.values())
        return PoolUsage(
            name=self.key.name, model=self.key.model_identity, actors=len(self._set),
            min_actors=self.placement.min_actors,
            per_actor=ray_resources(self._resources_per_actor()),
            leases=self._leases.active(), held_batches=held + len(sample.silent),
            last_active=max(self._last_used, self._leases.last_end, self.created_at))

    def yield_actors(self, count: int, requester: str) -> int:
        """Give back up to `count` actors (down to min_actors) when idle: no lease, no
        batch in flight, no start or scale under way. Returns how many were given."""
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            if self._stopping or self._leases.active():
                return 0
            sample = self._sample(timeout=3.0)
            if sample.silent or any(status.get("held_batches", 0)
                                    for status in sample.statuses.values()):
                return 0
            before = len(self._set)
            target = max(self.placement.min_actors, before - count)
            if target >= before:
                return 0
            self._note_resize(before, target, f"gave way to {requester}")
            self._kill_and_wait(self._to_remove(before - target, sample.dead))
            self._load.changed()
            log.info("pool %s (idle) scaled down from %d to %d actor(s) to make room for "
                     "pool %s; it scales back up when a job arrives", self.key.name, before,
                     target, requester)
            return before - target
        finally:
            self._lock.release()


def cluster_gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0)


def _cluster_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 0)


def _cause(exc: BaseException) -> str:
    """One line on why a Ray call failed (its first line: Ray's texts run long)."""
    text = str(getattr(exc, "cause", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
