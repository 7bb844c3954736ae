"""Named, detached pools, seen from the driver: `Pool.get_or_create` by key, status,
scale, leases, stop.

A pool is a detached `PoolManager` actor (pool/manager.py: weights, Flight entry
point, leases, idle scale-down, adoption after a manager's death) named after the
PoolKey, in the engine's own namespace, plus its actors. A second job with the same
key finds the manager by name and reuses its warm actors; a job with a different model
or weights gets its own pool.

A pool serves any `Servable` (servable.py): image models on InferenceActor, and
predict_batch_udf's functions on PredictFnActor (actor/predict_fn.py). `Pool.address()`
gives the driver the PoolAddress (manager and actor URIs, token, TLS certificate) it
ships to its tasks, which reach the pool over Arrow Flight, not Ray.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, replace

from hybrid_infer.errors import PoolError, unwrapped
from hybrid_infer.pool.control import cluster_gpus
from hybrid_infer.pool.manager import PLAN_LEASE_PREFIX, PoolManager
from hybrid_infer.pool.names import pool_names
from hybrid_infer.pool.settings import PoolKey, PoolSettings, check_actor_count
from hybrid_infer.runtime import NAMESPACE, POOL_WORKER_ENV
from hybrid_infer.transport.protocol import PoolAddress

log = logging.getLogger(__name__)


def start_arguments(spec) -> tuple:
    """(payload, build_node) for PoolManager.start: a payload built off the driver is
    built on the driver's node by a one-off task, unless the driver is a Ray Client
    (not a node: it builds the payload itself and sends it)."""
    import ray
    from ray.util.client import ray as ray_client

    if spec.payload_off_driver and not ray_client.is_connected():
        return None, ray.get_runtime_context().get_node_id()
    return spec.build_payload(), None


class Pool:
    """Driver-side handle on a named pool. Create with `Pool.get_or_create`."""

    def __init__(self, manager, name: str):
        self._manager = manager
        self.name = name

    # -- finding and creating ----------------------------------------------------------
    @classmethod
    def get_or_create(cls, spec, settings: PoolSettings | None = None) -> "Pool":
        """The warm pool for (spec, settings), or a new one. Ray must be connected."""
        settings = settings or PoolSettings()
        key = PoolKey.derive(spec.identity, spec.payload_digest(), settings.actor)
        for attempt in range(1, MANAGER_ATTEMPTS + 1):
            try:
                return cls._get_or_start(key, spec, settings)
            except _ManagerDied:
                # a manager that just died may keep its name a moment, or one died while
                # starting: a new one (which adopts the live actors) is started next time
                log.warning("pool %s: its manager died (attempt %d of %d); starting a new "
                            "one", key.name, attempt, MANAGER_ATTEMPTS)
                time.sleep(0.5 * attempt)
        raise PoolError(f"pool {key.name}: its manager died {MANAGER_ATTEMPTS} times while "
                        "this job started it; see the Ray logs of its PoolManager actor")

    @classmethod
    def _get_or_start(cls, key: PoolKey, spec, settings: PoolSettings) -> "Pool":
        import ray

        try:
            manager = ray.remote(PoolManager).options(
                name=key.name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                num_cpus=0, max_concurrency=16, max_restarts=0,
                runtime_env={"env_vars": POOL_WORKER_ENV},
            ).remote(key, spec, settings)
        except ValueError as exc:  # the name changed hands between Ray's look-up and create
            raise _ManagerDied(str(exc)) from None
        pool = cls(manager, key.name)
        existing = pool._call("describe", died=_ManagerDied)
        if existing["key"] != key:  # a 64-bit name collision: never serve another model
            raise PoolError(f"pool {key.name} serves {existing['key'].describe()}, "
                            f"not {key.describe()}: stop it first")
        if not pool._call("is_started", died=_ManagerDied):
            started = time.perf_counter()
            num_actors = settings.placement.bounded(settings.placement.num_actors or _default_num_actors())
            pool._call("start", num_actors, *start_arguments(spec), died=_ManagerDied)
            log.info("started pool %s for %s: %d actor(s) in %.1f s", key.name,
                     spec.identity, num_actors, time.perf_counter() - started)
        else:
            _warn_on_other_placement(key.name, existing["placement"], settings.placement)
        return pool

    @classmethod
    def get(cls, name: str) -> "Pool":
        import ray

        try:
            return cls(ray.get_actor(name, namespace=NAMESPACE), name)
        except ValueError:
            raise PoolError(f"no pool named {name!r} is running in namespace {NAMESPACE!r}: "
                            "list pools with `hybrid-infer pool status`") from None

    @staticmethod
    def names() -> list[str]:
        return pool_names()

    # -- using ----------------------------------------------------------------------------
    def actors(self) -> list:
        return self._call("actors")

    def heal(self) -> list:
        return self._call("heal")

    def address(self) -> PoolAddress:
        """The manager's and actors' Flight URIs and the token, for Spark tasks."""
        return self._call("address")

    def scale(self, num_actors: int) -> list:
        """Scale to `num_actors` now (0: free every actor until a job arrives). A size
        below 0 or outside the pool's [min_actors, max_actors] raises ConfigurationError
        (a ValueError)."""
        return self._call("scale", check_actor_count(num_actors))

    def lease(self, ttl_s: float) -> None:
        """Hold the pool at its size for `ttl_s` (infer() does, for its plan's tasks)."""
        if ttl_s > 0:
            self._call("hold_lease", f"{PLAN_LEASE_PREFIX}{uuid.uuid4().hex}", ttl_s)

    def describe(self) -> dict:
        return self._call("describe")

    def status(self) -> dict:
        import ray

        info = self.describe()
        actor_status = ray.get([a.status.remote() for a in self.actors()])
        return {
            "name": self.name,
            "model": info["key"].model_identity,
            "weights_digest": info["key"].weights_digest,
            "settings": info["key"].compute,
            "placement": asdict(info["placement"]),
            "weights_bytes": info["weights_bytes"],
            "uptime_s": round(time.time() - info["created_at"], 1),
            "replaced_actors": info["replaced_actors"],
            "adopted_actors": info["adopted_actors"],  # from a manager that died
            "last_heal_s": info["last_heal_s"],
            "leases": info["leases"],
            # the last size changes: [wall time, from, to, why] (busy, load fell, idle,
            # gave way to <pool>, asked)
            "resizes": info.get("resizes", []),
            "actors": actor_status,
            "rows": sum(s["rows"] for s in actor_status),
            "batches": sum(s["batches"] for s in actor_status),
            "model_loads": sum(s["model_loads"] for s in actor_status),
        }

    def stop(self) -> int:
        """Stop the pool for good: its actors, its manager and the weights' copy. A
        DataFrame built on it then fails saying to run infer() again (idle pools only
        scale down: see the module's docstring). Returns how many actors were killed."""
        import ray

        killed = self._call("stop")
        ray.kill(self._manager, no_restart=True)
        return killed

    def _call(self, method: str, *args, died: type[PoolError] = PoolError):
        """The manager's `method`; `died` is raised when the manager is gone."""
        import ray

        try:
            return ray.get(getattr(self._manager, method).remote(*args))
        except ray.exceptions.RayTaskError as exc:
            raise unwrapped(exc) from None
        except ray.exceptions.RayActorError:
            raise died(f"pool {self.name!r} was stopped or its manager died: start it "
                       "again (hybrid-infer pool start, or run the job again: a new "
                       "manager adopts the pool's live actors)") from None


class _ManagerDied(PoolError):
    """The manager Pool.get_or_create found or started is dead: try a new one."""


#: how many managers Pool.get_or_create tries when the one it finds or starts dies
MANAGER_ATTEMPTS = 3


def _default_num_actors() -> int:
    gpus = cluster_gpus()
    return int(gpus) if gpus >= 1 else 1


def _warn_on_other_placement(name: str, running, asked) -> None:
    """A running pool keeps its own placement: say so when a job asks for another."""
    if asked.num_actors is None:  # "the default": whatever the pool has is fine
        asked = replace(asked, num_actors=running.num_actors)
    differ = {field: (value, getattr(asked, field)) for field, value in asdict(running).items()
              if getattr(asked, field) != value}
    if differ:
        log.warning(
            "pool %s is already running with %s; this job asked for %s. The running pool "
            "keeps its own (scale it with `hybrid-infer pool scale`, or stop it to start "
            "one with the new values)", name,
            ", ".join(f"{field}={ran}" for field, (ran, _) in differ.items()),
            ", ".join(f"{field}={want}" for field, (_, want) in differ.items()))
