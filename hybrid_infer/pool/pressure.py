"""Idle pools yield to pools that cannot be placed: warm reuse never becomes starvation.

Every pool's manager is a named actor in the engine's namespace, whichever driver
started it, so a pool that lacks resources (at start, when it grows, when it heals)
can ask the others. Before its new actors wait for the cluster, it asks the idle ones,
least recently used first, to scale down toward their min_actors (`yield_actors`; their
managers stay, so they come back warm-able). An idle pool holds no lease and has no
batch in flight; a pool holding a lease is never asked. Only when nothing can be freed
do the new actors wait (an autoscaler may add nodes), and the wait names the pools
holding the resources (`holders_text`).

`choose_yielders` is the policy, a pure function; `free_for` is the mechanism (Ray).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Ray resource names of the per-actor keywords (placement.resources_per_actor)
RESOURCE_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU"}
#: how long to wait for another pool's manager to report its usage
USAGE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class PoolUsage:
    """What one pool holds and whether it could give it back (its manager's `usage`)."""

    name: str
    model: str
    actors: int
    min_actors: int
    per_actor: dict  # Ray resources each actor holds: {"CPU": 1.0, "GPU": 0.0}
    leases: int
    held_batches: int
    last_active: float  # wall time of its last work, lease end or size change

    @property
    def idle(self) -> bool:
        return self.leases == 0 and self.held_batches == 0

    def describe(self) -> str:
        state = "idle" if self.idle else (f"busy: {self.leases} lease(s), "
                                          f"{self.held_batches} batch(es) in flight")
        held = ", ".join(f"{amount:g} {name}" for name, amount in self.per_actor.items()
                         if amount)
        return f"{self.name} ({self.model}; {self.actors} actor(s) of {held or 'nothing'}; {state})"


def shortfall(per_actor: dict, count: int, available: dict) -> dict:
    """Resources missing for `count` actors of `per_actor` each, given `available`."""
    missing = {}
    for name, amount in per_actor.items():
        lacking = amount * count - available.get(name, 0.0)
        if amount > 0 and lacking > 1e-9:
            missing[name] = lacking
    return missing


def placeable(per_actor: dict, available: dict) -> int | float:
    """How many actors of `per_actor` Ray resources fit in `available` (inf: no need)."""
    counts = [math.floor(available.get(name, 0.0) / amount + 1e-9)
              for name, amount in per_actor.items() if amount > 0]
    return min(counts) if counts else math.inf


def choose_yielders(candidates: list[PoolUsage], missing: dict) -> list[tuple[str, int]]:
    """(pool name, actors to give back) covering `missing`, least recently used first.

    Only idle pools yield, only down to their min_actors, and only pools holding what is
    missing. An empty list when they cannot cover all of it: a pool that would still not
    fit must not cost the others their warm actors.
    """
    missing = dict(missing)
    chosen = []
    for usage in sorted(candidates, key=lambda u: u.last_active):
        if not missing:
            break
        spare = usage.actors - usage.min_actors
        helps = [name for name in missing if usage.per_actor.get(name, 0) > 0]
        if not usage.idle or spare <= 0 or not helps:
            continue
        wanted = max(math.ceil(missing[name] / usage.per_actor[name] - 1e-9) for name in helps)
        count = min(spare, wanted)
        chosen.append((usage.name, count))
        for name in helps:
            missing[name] -= count * usage.per_actor[name]
            if missing[name] <= 1e-9:
                del missing[name]
    return [] if missing else chosen


def ray_resources(per_actor: dict) -> dict:
    """{"num_cpus": 1, "num_gpus": 0} -> {"CPU": 1.0, "GPU": 0.0}."""
    return {RESOURCE_NAMES[key]: float(value or 0) for key, value in per_actor.items()
            if key in RESOURCE_NAMES}


def other_pools(requester: str) -> list[PoolUsage]:
    """Every other pool's usage on this Ray cluster (managers that do not answer within
    USAGE_TIMEOUT_S are left out: they cannot yield now anyway)."""
    import ray

    from hybrid_infer.pool.names import pool_names
    from hybrid_infer.runtime import NAMESPACE

    calls = {}
    for name in pool_names():
        if name == requester:
            continue
        try:
            calls[name] = ray.get_actor(name, namespace=NAMESPACE).usage.remote()
        except Exception:  # noqa: BLE001 - stopped since it was listed
            continue
    if not calls:
        return []
    ray.wait(list(calls.values()), num_returns=len(calls), timeout=USAGE_TIMEOUT_S)
    found = []
    for name, ref in calls.items():
        try:
            found.append(ray.get(ref, timeout=0))
        except Exception:  # noqa: BLE001 - dead, stopping, or slow: not a candidate now
            continue
    return found


def free_for(requester: str, per_actor: dict, count: int) -> tuple[int, list[PoolUsage]]:
    """Ask idle pools to give back what `count` new, not yet placed actors of
    `requester` lack (never count actors already placed: they hold their resources).

    Returns (actors the other pools gave back, every other pool's usage as seen).
    """
    import ray

    wanted = ray_resources(per_actor)
    available = ray.available_resources()
    missing = shortfall(wanted, count, available)
    if not missing:
        return 0, []
    log.info("pool %s: %d new actor(s) lack %s (free: %s); asking idle pools to give way",
             requester, count, missing, {name: available.get(name, 0.0) for name in wanted})
    usages = other_pools(requester)
    freed = 0
    for name, actors in choose_yielders(usages, missing):
        try:
            from hybrid_infer.runtime import NAMESPACE

            manager = ray.get_actor(name, namespace=NAMESPACE)
            gave = ray.get(manager.yield_actors.remote(actors, requester), timeout=60)
        except Exception as exc:  # noqa: BLE001 - it stopped or died meanwhile
            log.info("pool %s could not yield to %s: %s", name, requester, exc)
            continue
        if gave:
            freed += gave
            log.info("pool %s: idle pool %s gave back %d actor(s) to make room", requester,
                     name, gave)
    return freed, usages


def holders_text(usages: list[PoolUsage]) -> str:
    """Which pools hold actors now, for a log line or an error."""
    holding = [usage.describe() for usage in usages if usage.actors]
    return "; ".join(holding) if holding else "no other pool of this engine"
