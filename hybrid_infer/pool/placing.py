"""How the pool manager places and removes actors (a mixin of PoolManager,
pool/manager.py): names, nodes and threads for new actors, idle pools asked to give
way first (pool/pressure.py), the wait bounded by place_timeout_s, and kills that wait
until an actor's name is free again.

It relies on the manager's state (`_set`, `_weights`, `_token`, `actor_settings`,
`placement`, `key`, `spec`).
"""

from __future__ import annotations

import contextlib
import logging
import time

from hybrid_infer.errors import PoolError, from_spark
from hybrid_infer.pool.actor_set import Member
from hybrid_infer.pool.control import cluster_gpus
from hybrid_infer.pool.orphans import actor_name, taken_indices
from hybrid_infer.pool.placement import (cpu_nodes, cpus_per_actor, gpus_per_actor,
                                         plan_on_nodes, runs_on_node_cores,
                                         unplaced_message)
from hybrid_infer.pool.pressure import (free_for, holders_text, other_pools, placeable,
                                        ray_resources)
from hybrid_infer.runtime import NAMESPACE, POOL_WORKER_ENV
from hybrid_infer.servable import PayloadRef

log = logging.getLogger("hybrid_infer.pool.manager")  # operators read one logger

#: how often a placement that waits checks its actors and asks idle pools again
PLACE_POLL_S = 2.0


class Placing:
    def _to_remove(self, count: int, dead: set) -> list[Member]:
        """Which `count` actors go: dead ones first, then the newest."""
        members = sorted(self._set.members(),
                         key=lambda m: (m.index not in dead, -m.index))
        return self._set.remove(member.index for member in members[:count])

    def _place(self, count: int) -> None:
        """Start `count` actors and wait until they serve. Idle pools are asked to give
        way first (pool/pressure.py); what still cannot be placed waits for the cluster
        up to place_timeout_s, naming the pools that hold its resources. A weights build
        still running is waited for once the actors are started (they start meanwhile):
        its error or timeout is the pool's."""
        import ray

        per_actor = self._resources_per_actor()
        freed, usages = free_for(self.key.name, per_actor, count)
        # Actors that do not fit now wait for resources; the others hold theirs at once
        # (while loading their model, they are not waiting for anyone to give way). Idle
        # pools only give way when that covers all that was lacking.
        unplaced = 0 if freed else max(0, count - placeable(ray_resources(per_actor),
                                                            ray.available_resources()))
        new = [self._spawn(index, node_id, threads) for index, (node_id, threads)
               in zip(self._free_indices(count), self._node_plan(count, per_actor))]
        try:  # the new actors start their processes meanwhile (servable.PayloadRef)
            self._weights.wait(self.placement.build_timeout_s)
        except BaseException:
            self._kill(new)
            raise
        settings = self.actor_settings
        pending = {member.actor.serve.remote(self._token, settings.tls_cert,
                                             settings.tls_key,
                                             self.placement.flight_port_range): member
                   for member in new}
        timeout = self.placement.place_timeout_s
        deadline = time.monotonic() + timeout
        next_report = time.monotonic() + 30.0
        try:
            while pending and (remaining := deadline - time.monotonic()) > 0:
                ready, _ = ray.wait(list(pending), num_returns=len(pending),
                                    timeout=min(PLACE_POLL_S, remaining))
                for ref in ready:
                    pending.pop(ref).uri = ray.get(ref)
                if pending and unplaced:
                    freed, seen = free_for(self.key.name, per_actor, min(unplaced, len(pending)))
                    usages = seen or usages
                    if freed:  # idle pools only give way when that covers all we lack
                        unplaced = 0
                    if time.monotonic() >= next_report:
                        next_report += 30.0
                        log.warning("pool %s: %d actor(s) wait for resources (%s each); "
                                    "other pools: %s", self.key.name, len(pending),
                                    per_actor, holders_text(usages or
                                                            other_pools(self.key.name)))
        except ray.exceptions.RayActorError as exc:  # its constructor raised
            self._kill(new)
            raise from_spark(exc) or PoolError(
                f"a new actor of pool {self.key.name} failed to start: {exc}") from None
        if pending:
            self._kill(new)
            raise PoolError(unplaced_message(
                len(pending), timeout, per_actor, ray.cluster_resources(),
                ray.available_resources(), holders_text(other_pools(self.key.name))))
        for member in new:
            self._set.add(member)

    def _free_indices(self, count: int) -> list[int]:
        """Indices for new actors: never a name held by any actor of this pool (ours, an
        orphan, or one still dying)."""
        used = self._set.indices() | set(taken_indices(self.key.name))
        free, index = [], 0
        while len(free) < count:
            if index not in used:
                free.append(index)
            index += 1
        return free

    def _node_plan(self, count: int, per_actor: dict) -> list[tuple[str | None, int | None]]:
        """(node, torch threads) per new actor: CPU pools sized by default go one per
        node with its cores (placement.plan_on_nodes); others where Ray spreads them."""
        if not self._on_node_cores(per_actor):
            return [(None, None)] * count
        return plan_on_nodes(count, cpu_nodes(), self._set.per_node(), per_actor["num_cpus"])

    def _on_node_cores(self, per_actor: dict) -> bool:
        return runs_on_node_cores(self.actor_settings.torch_threads,
                                  self.placement.num_cpus_per_actor, per_actor["num_gpus"])

    def _spawn(self, index: int, node_id: str | None, node_threads: int | None) -> Member:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = (NodeAffinitySchedulingStrategy(node_id, soft=True) if node_id
                    else "SPREAD")
        remote_cls = ray.remote(self.spec.actor_class()).options(
            name=actor_name(self.key.name, index),
            namespace=NAMESPACE,
            lifetime="detached",
            **self._resources_per_actor(),
            max_concurrency=64,
            max_restarts=0,
            scheduling_strategy=strategy,
            runtime_env={"env_vars": POOL_WORKER_ENV},
        )
        extra = {"node_threads": node_threads} if node_threads else {}
        actor = remote_cls.remote(self.spec, PayloadRef(self._weights.ref), self.actor_settings,
                                  self.key.name, index, **extra)
        return Member(index, actor, node_id=node_id)

    def _resources_per_actor(self) -> dict:
        num_gpus = gpus_per_actor(self.actor_settings.device,
                                  self.placement.num_gpus_per_actor, cluster_gpus())
        return {"num_cpus": cpus_per_actor(self.placement.num_cpus_per_actor),
                "num_gpus": num_gpus}

    @staticmethod
    def _kill(members: list[Member]) -> None:
        import ray

        for member in members:
            with contextlib.suppress(Exception):
                ray.kill(member.actor, no_restart=True)

    def _kill_and_wait(self, members: list[Member], timeout_s: float = 30.0) -> None:
        """Kill actors and wait until their names are free: ray.kill is asynchronous, and
        a scale-up soon after reuses the names (actor-0, actor-1...)."""
        import ray

        self._kill(members)
        deadline = time.time() + timeout_s
        for member in members:
            while time.time() < deadline:
                try:
                    ray.get_actor(actor_name(self.key.name, member.index), namespace=NAMESPACE)
                except ValueError:
                    break
                time.sleep(0.1)
