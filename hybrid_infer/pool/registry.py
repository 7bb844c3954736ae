"""Named, detached pools: get-or-create by key, status, scale, heal, idle timeout, stop.

A pool is a detached `PoolManager` actor named after the PoolKey, in the engine's own
namespace, plus its InferenceActors. The manager owns the object-store copy of the
weights, so the copy lives exactly as long as the pool, whichever driver created it.
The weights are built by a one-off task the manager calls (its worker exits after), so
neither the driver nor the manager ever holds torch or a copy of the weights. A second
job with the same key finds the manager by name and reuses its warm actors; a job with
a different model or weights gets its own pool.

A pool serves any `Servable` (servable.py): image models on InferenceActor, and
predict_batch_udf's functions on PredictFnActor (actor/predict_fn.py).

Spark tasks reach the pool over Arrow Flight, not Ray: the manager creates the pool's
access token, starts each actor's Flight service (`PoolActor.serve`) and serves
Flight itself, as the pool's stable entry point: its "endpoints" action returns the
live actors' URIs, replacing dead actors first when asked. `Pool.address()` gives the
driver the PoolAddress (manager and actor URIs, token, TLS certificate) it ships to
its tasks.
"""

from __future__ import annotations

import json
import secrets
import threading
import time

from hybrid_infer.errors import HybridInferError, PoolError
from hybrid_infer.pool.settings import PoolKey, PoolSettings
from hybrid_infer.runtime import NAMESPACE
from hybrid_infer.servable import payload_nbytes
from hybrid_infer.transport.protocol import PoolAddress

POOL_PREFIX = "pool-"


class PoolManager:
    """The pool's control plane (a detached Ray actor). Holds no model itself."""

    def __init__(self, key: PoolKey, spec, settings: PoolSettings):
        self.key = key
        self.spec = spec
        self.settings = settings
        self.created_at = time.time()
        self._weights_ref = None
        self._weights_bytes = 0
        self._actors: list = []
        self._indices: dict[str, int] = {}  # actor id -> its index in the actor names
        self._endpoints: dict[str, str] = {}  # actor id -> its Flight URI
        self._lock = threading.RLock()
        self._replaced = 0
        self._last_heal_s = None  # how long the last heal that replaced an actor took
        self._stopping = False
        self._last_change = self.created_at  # end of the last start/scale/heal
        self._token = secrets.token_urlsafe(32)
        self._service = self._serve_flight()
        if settings.idle_timeout_s:
            threading.Thread(target=self._idle_reaper, daemon=True).start()

    # -- the pool's Flight entry point ---------------------------------------------------
    def _serve_flight(self):
        from hybrid_infer.actor.service import node_address
        from hybrid_infer.transport.server import FlightService

        return FlightService(None, token=self._token, host=node_address(),
                             tls_cert=self.settings.tls_cert, tls_key=self.settings.tls_key,
                             actions={"endpoints": self._endpoints_action}, max_workers=4)

    def _endpoints_action(self, body: bytes) -> bytes:
        asked = json.loads(body or b"{}")
        actors = self.heal() if asked.get("heal") else self.actors()
        return json.dumps({"actors": self._uris(actors)}).encode()

    def _uris(self, actors: list) -> list[str]:
        return [self._endpoints[a._actor_id.hex()] for a in actors
                if a._actor_id.hex() in self._endpoints]

    def address(self) -> PoolAddress:
        """What a Spark task needs to use this pool (see transport/protocol.py)."""
        cert = None
        if self.settings.tls_cert:
            with open(self.settings.tls_cert, "rb") as handle:
                cert = handle.read()
        return PoolAddress(self.key.name, self._service.uri, tuple(self._uris(self.actors())),
                           self._token, cert)

    # -- lifecycle -------------------------------------------------------------------
    def is_started(self) -> bool:
        return self._weights_ref is not None

    def start(self, num_actors: int, payload=None, build_node: str | None = None) -> list:
        """Get the weights into the object store (owned here) and start the actors.

        `payload`: what the driver built (see start_arguments); this manager puts it.
        Without one, a one-off task on `build_node` (the driver's node: weights paths
        are the driver's) builds it. Either way the ref is owned by this detached
        actor, so the one copy outlives the driver that started the pool.
        """
        import ray

        with self._lock:
            if self._weights_ref is None:
                if payload is None:
                    self._weights_ref, self._weights_bytes = self._build_weights(build_node)
                else:
                    self._weights_ref = ray.put(payload)
                    self._weights_bytes = payload_nbytes(payload)
            self._scale_locked(num_actors)
            return list(self._actors)

    def _build_weights(self, node_id: str) -> tuple:
        """(ref, bytes) of the spec's payload (weights arrays), built by a one-off task."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # num_cpus=0: building must not wait behind actors holding every CPU;
        # max_calls=1: the worker (torch, a transient copy of the model) exits after.
        build = ray.remote(num_cpus=0, max_calls=1)(_build_payload).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        ref = build.remote(self.spec)
        try:
            arrays = ray.get(ref, timeout=self.settings.start_timeout_s)
        except ray.exceptions.RayTaskError as exc:
            raise unwrapped(exc) from None
        except ray.exceptions.GetTimeoutError:
            raise PoolError(f"building the weights took over {self.settings.start_timeout_s:.0f}"
                            " s (start_timeout_s)") from None
        return ref, payload_nbytes(arrays)  # (read-only views of the object; not copied)

    def actors(self) -> list:
        # No lock: a job starting while a heal loads a replacement gets the live actors
        # now rather than waiting for the load (copying a list is atomic under the GIL).
        return list(self._actors)

    def heal(self) -> list:
        """Replace actors that died; returns the live set."""
        import ray

        with self._lock:
            if self._stopping:
                return []
            started = time.perf_counter()
            pings = [(actor, actor.ping.remote()) for actor in self._actors]
            live = []
            for actor, ping in pings:
                try:
                    ray.get(ping, timeout=30)
                    live.append(actor)
                except Exception:
                    self._replaced += 1
            wanted = len(self._actors)
            if len(live) < wanted:
                self._actors = live
                self._scale_locked(wanted)
                self._last_heal_s = round(time.perf_counter() - started, 3)
            return list(self._actors)

    def scale(self, num_actors: int) -> list:
        with self._lock:
            self._scale_locked(num_actors)
            return list(self._actors)

    def _scale_locked(self, num_actors: int) -> None:
        import ray

        if self._weights_ref is None:
            raise PoolError("the pool has no weights yet: start it with Pool.get_or_create")
        while len(self._actors) > num_actors:
            ray.kill(self._actors.pop())
        used = {self._index_of(a) for a in self._actors}
        index = 0
        new = []
        while len(self._actors) + len(new) < num_actors:
            while index in used:
                index += 1
            used.add(index)
            new.append(self._spawn(index))
        if new:  # wait until they have loaded: a job should not race the model load
            settings = self.settings
            try:
                uris = ray.get([actor.serve.remote(self._token, settings.tls_cert,
                                                   settings.tls_key) for actor in new],
                               timeout=self.settings.start_timeout_s)
            except ray.exceptions.GetTimeoutError:
                for actor in new:
                    ray.kill(actor, no_restart=True)
                raise PoolError(
                    f"{len(new)} new actor(s) did not start within "
                    f"{self.settings.start_timeout_s:.0f} s: the cluster may lack the CPUs/GPUs "
                    f"they ask for ({ray.available_resources()} free); ask for fewer actors "
                    "or add nodes") from None
            for actor, uri in zip(new, uris):
                self._endpoints[actor._actor_id.hex()] = uri
            self._actors.extend(new)
        self._last_change = time.time()

    def _index_of(self, actor) -> int:
        return self._indices.get(actor._actor_id.hex(), -1)

    def _spawn(self, index: int):
        import ray

        actor_class = self.spec.actor_class()
        settings = self.settings
        num_gpus = settings.num_gpus_per_actor
        if num_gpus is None:
            num_gpus = 1 if settings.device in ("auto", "cuda") and _cluster_gpus() else 0
        remote_cls = ray.remote(actor_class).options(
            name=f"{self.key.name}-actor-{index}",
            namespace=NAMESPACE,
            lifetime="detached",
            num_cpus=settings.num_cpus_per_actor,
            num_gpus=num_gpus,
            max_concurrency=64,
            max_restarts=0,
            scheduling_strategy="SPREAD",
            runtime_env={"env_vars": {"MALLOC_ARENA_MAX": "2"}},
        )
        actor = remote_cls.remote(self.spec, self._weights_ref, settings, self.key.name, index)
        self._indices[actor._actor_id.hex()] = index
        return actor

    def stop(self) -> int:
        """Kill every actor, then this manager. Returns how many actors were killed."""
        import ray

        with self._lock:
            self._stopping = True
            count = len(self._actors)
            for actor in self._actors:
                ray.kill(actor, no_restart=True)
            self._actors = []
            self._weights_ref = None
        threading.Thread(target=self._service.shutdown, daemon=True).start()
        return count

    def _idle_reaper(self) -> None:
        import ray

        period = min(30.0, max(1.0, self.settings.idle_timeout_s / 4))
        while not self._stopping:
            time.sleep(period)
            try:
                statuses = ray.get([a.status.remote() for a in self.actors()], timeout=30)
            except Exception:
                continue
            # A start, scale or heal in progress holds the lock: that is not idleness.
            if not self.is_started() or not self._lock.acquire(blocking=False):
                continue
            try:
                last_used = max([s["last_used"] for s in statuses], default=0.0)
                idle = time.time() - max(last_used, self._last_change)
                if idle <= self.settings.idle_timeout_s:
                    continue
                self.stop()
            finally:
                self._lock.release()
            ray.kill(ray.get_runtime_context().current_actor)
            return

    # -- reporting -------------------------------------------------------------------
    def describe(self) -> dict:
        return {"name": self.key.name, "key": self.key, "spec": self.spec,
                "settings": self.settings, "created_at": self.created_at,
                "weights_bytes": self._weights_bytes, "replaced_actors": self._replaced,
                "last_heal_s": self._last_heal_s}


def _build_payload(spec):
    return spec.build_payload()


def start_arguments(spec) -> tuple:
    """(payload, build_node) for PoolManager.start: a payload built off the driver is
    built on the driver's node by a one-off task, unless the driver is a Ray Client
    (not a node: it builds the payload itself and sends it)."""
    import ray
    from ray.util.client import ray as ray_client

    if spec.payload_off_driver and not ray_client.is_connected():
        return None, ray.get_runtime_context().get_node_id()
    return spec.build_payload(), None


def unwrapped(exc: Exception) -> Exception:
    """The engine's own error inside a Ray task/actor error, so its message stays short."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, HybridInferError) else exc


def _cluster_gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0)


class Pool:
    """Driver-side handle on a named pool. Create with `Pool.get_or_create`."""

    def __init__(self, manager, name: str):
        self._manager = manager
        self.name = name

    # -- finding and creating ----------------------------------------------------------
    @classmethod
    def get_or_create(cls, spec, settings: PoolSettings | None = None) -> "Pool":
        """The warm pool for (spec, settings), or a new one. Ray must be connected."""
        import ray

        settings = settings or PoolSettings()
        key = PoolKey(spec.identity, spec.payload_digest(), settings.compute_settings())
        manager = ray.remote(PoolManager).options(
            name=key.name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_concurrency=16, max_restarts=0,
        ).remote(key, spec, settings)
        pool = cls(manager, key.name)
        existing = pool.describe()["key"]
        if existing != key:  # a 64-bit name collision: never serve another model
            raise PoolError(f"pool {key.name} serves {existing.describe()}, "
                            f"not {key.describe()}: stop it first")
        if not ray.get(manager.is_started.remote()):
            num_actors = settings.num_actors or _default_num_actors()
            pool._call("start", num_actors, *start_arguments(spec))
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
        from ray.util import list_named_actors

        return sorted(entry["name"] for entry in list_named_actors(all_namespaces=True)
                      if entry["namespace"] == NAMESPACE
                      and entry["name"].startswith(POOL_PREFIX) and "-actor-" not in entry["name"])

    # -- using ----------------------------------------------------------------------------
    def actors(self) -> list:
        return self._call("actors")

    def heal(self) -> list:
        return self._call("heal")

    def address(self) -> PoolAddress:
        """The manager's and actors' Flight URIs and the token, for Spark tasks."""
        return self._call("address")

    def scale(self, num_actors: int) -> list:
        return self._call("scale", num_actors)

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
            "weights_bytes": info["weights_bytes"],
            "uptime_s": round(time.time() - info["created_at"], 1),
            "replaced_actors": info["replaced_actors"],
            "last_heal_s": info["last_heal_s"],
            "actors": actor_status,
            "rows": sum(s["rows"] for s in actor_status),
            "batches": sum(s["batches"] for s in actor_status),
            "model_loads": sum(s["model_loads"] for s in actor_status),
        }

    def stop(self) -> int:
        import ray

        killed = self._call("stop")
        ray.kill(self._manager, no_restart=True)
        return killed

    def _call(self, method: str, *args):
        import ray

        try:
            return ray.get(getattr(self._manager, method).remote(*args))
        except ray.exceptions.RayTaskError as exc:
            raise unwrapped(exc) from None
        except ray.exceptions.RayActorError:
            raise PoolError(f"pool {self.name!r} was stopped or its manager died: start it "
                            "again (hybrid-infer pool start, or run the job again)") from None


def _default_num_actors() -> int:
    gpus = _cluster_gpus()
    return int(gpus) if gpus >= 1 else 1
