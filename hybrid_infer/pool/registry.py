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

import contextlib
import logging
import json
import secrets
import threading
import time
from dataclasses import asdict, replace

from hybrid_infer.errors import HybridInferError, PoolError, from_spark
from hybrid_infer.pool.placement import gpus_per_actor, unplaced_message
from hybrid_infer.pool.settings import PoolKey, PoolSettings
from hybrid_infer.runtime import NAMESPACE
from hybrid_infer.servable import payload_nbytes
from hybrid_infer.transport.protocol import PoolAddress

log = logging.getLogger(__name__)

POOL_PREFIX = "pool-"


class PoolManager:
    """The pool's control plane (a detached Ray actor). Holds no model itself.

    It keeps the creator's ActorSettings (given to every actor it starts) and
    PlacementSettings (its sizing, timeouts and idle timeout); never a job's
    ClientSettings, which each job's caller reads for itself.
    """

    def __init__(self, key: PoolKey, spec, settings: PoolSettings):
        from hybrid_infer.logs import log_to_stderr

        log_to_stderr()  # this actor's stderr: its Ray worker log
        self.key = key
        self.spec = spec
        self.actor_settings = settings.actor
        self.placement = settings.placement
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
        if self.placement.idle_timeout_s:
            threading.Thread(target=self._idle_reaper, daemon=True).start()

    # -- the pool's Flight entry point ---------------------------------------------------
    def _serve_flight(self):
        from hybrid_infer.actor.service import node_address
        from hybrid_infer.transport.server import FlightService

        return FlightService(None, token=self._token, host=node_address(),
                             tls_cert=self.actor_settings.tls_cert, tls_key=self.actor_settings.tls_key,
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
        if self.actor_settings.tls_cert:
            with open(self.actor_settings.tls_cert, "rb") as handle:
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
            started = time.perf_counter()
            if self._weights_ref is None:
                if payload is None:
                    self._weights_ref, self._weights_bytes = self._build_weights(build_node)
                else:
                    self._weights_ref = ray.put(payload)
                    self._weights_bytes = payload_nbytes(payload)
            self._scale_locked(num_actors)
            log.info("pool %s started: %d actor(s), %d weight bytes, in %.1f s (%s)",
                     self.key.name, len(self._actors), self._weights_bytes,
                     time.perf_counter() - started, self.key.describe())
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
        timeout = self.placement.build_timeout_s
        try:
            arrays = ray.get(ref, timeout=timeout)
        except ray.exceptions.RayTaskError as exc:
            raise unwrapped(exc) from None
        except ray.exceptions.GetTimeoutError:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            raise PoolError(f"building the weights of {self.spec.identity} took over "
                            f"{timeout:.0f} s (build_timeout_s): raise build_timeout_s for a "
                            "large checkpoint on slow storage") from None
        return ref, payload_nbytes(arrays)  # (arrays: read-only views of the object; not copied)

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
                except Exception as exc:
                    self._replaced += 1
                    log.warning("pool %s: actor %d is lost, replacing it: %s", self.key.name,
                                self._index_of(actor), _cause(exc))
            wanted = len(self._actors)
            if len(live) < wanted:
                self._actors = live
                self._scale_locked(wanted)
                self._last_heal_s = round(time.perf_counter() - started, 3)
                log.warning("pool %s healed: %d actor(s) replaced in %.1f s", self.key.name,
                            wanted - len(live), self._last_heal_s)
            return list(self._actors)

    def scale(self, num_actors: int) -> list:
        with self._lock:
            before = len(self._actors)
            self._scale_locked(num_actors)
            self.placement = replace(self.placement, num_actors=num_actors)
            log.info("pool %s scaled from %d to %d actor(s)", self.key.name, before,
                     len(self._actors))
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
            timeout = self.placement.place_timeout_s
            settings = self.actor_settings
            try:
                uris = ray.get([actor.serve.remote(self._token, settings.tls_cert,
                                                   settings.tls_key) for actor in new],
                               timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                for actor in new:
                    ray.kill(actor, no_restart=True)
                raise PoolError(unplaced_message(
                    len(new), timeout, self._resources_per_actor(), ray.cluster_resources(),
                    ray.available_resources())) from None
            except ray.exceptions.RayActorError as exc:  # its constructor raised
                for actor in new:
                    ray.kill(actor, no_restart=True)
                raise from_spark(exc) or PoolError(
                    f"a new actor of pool {self.key.name} failed to start: {exc}") from None
            for actor, uri in zip(new, uris):
                self._endpoints[actor._actor_id.hex()] = uri
            self._actors.extend(new)
        self._last_change = time.time()

    def _index_of(self, actor) -> int:
        return self._indices.get(actor._actor_id.hex(), -1)

    def _spawn(self, index: int):
        import ray

        actor_class = self.spec.actor_class()
        remote_cls = ray.remote(actor_class).options(
            name=f"{self.key.name}-actor-{index}",
            namespace=NAMESPACE,
            lifetime="detached",
            **self._resources_per_actor(),
            max_concurrency=64,
            max_restarts=0,
            scheduling_strategy="SPREAD",
            runtime_env={"env_vars": {"MALLOC_ARENA_MAX": "2"}},
        )
        actor = remote_cls.remote(self.spec, self._weights_ref, self.actor_settings,
                                  self.key.name, index)
        self._indices[actor._actor_id.hex()] = index
        return actor

    def _resources_per_actor(self) -> dict:
        num_gpus = gpus_per_actor(self.actor_settings.device,
                                  self.placement.num_gpus_per_actor, _cluster_gpus())
        return {"num_cpus": self.placement.num_cpus_per_actor, "num_gpus": num_gpus}

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
        """Stop the pool after idle_timeout_s without work, whatever its actors' state."""
        import ray

        period = min(30.0, max(1.0, self.placement.idle_timeout_s / 4))
        while not self._stopping:
            time.sleep(period)
            try:
                if not self._reap_if_idle(timeout=max(5.0, period)):
                    continue
            except Exception:  # never let one bad round end the reaper
                log.exception("pool %s: the idle check failed; trying again in %.0f s",
                              self.key.name, period)
                continue
            ray.kill(ray.get_runtime_context().current_actor)
            return

    def _reap_if_idle(self, timeout: float = 30.0) -> bool:
        """Stop the actors when the pool has been idle past its timeout; True if stopped.

        A dead actor does no work: it counts as idle (the next job heals it). An actor
        that does not answer in `timeout` may be busy: the pool is not idle then.
        """
        import ray

        refs = {}
        for actor in self.actors():
            try:
                refs[actor.status.remote()] = actor
            except Exception as exc:  # a dead actor's handle may refuse the call itself
                log.warning("pool %s: actor %d counts as idle: %s", self.key.name,
                            self._index_of(actor), _cause(exc))
        ready, waiting = (ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
                          if refs else ([], []))
        if waiting:
            log.info("pool %s: %d actor(s) did not report within %.0f s: not idle",
                     self.key.name, len(waiting), timeout)
            return False
        last_used = 0.0
        for ref in ready:
            try:
                last_used = max(last_used, ray.get(ref)["last_used"])
            except Exception as exc:
                log.warning("pool %s: actor %d counts as idle: %s", self.key.name,
                            self._index_of(refs[ref]), _cause(exc))
        # A start, scale or heal in progress holds the lock: that is not idleness.
        if not self.is_started() or not self._lock.acquire(blocking=False):
            return False
        try:
            idle = time.time() - max(last_used, self._last_change)
            if idle <= self.placement.idle_timeout_s:
                return False
            log.info("pool %s idle for %.0f s (idle_timeout_s=%s): stopping it",
                     self.key.name, idle, self.placement.idle_timeout_s)
            self.stop()
            return True
        finally:
            self._lock.release()

    # -- reporting -------------------------------------------------------------------
    def describe(self) -> dict:
        return {"name": self.key.name, "key": self.key, "spec": self.spec,
                "actor_settings": self.actor_settings, "placement": self.placement,
                "created_at": self.created_at,
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


def _cause(exc: BaseException) -> str:
    """One line on why a Ray call failed (its first line: Ray's texts run long)."""
    text = str(getattr(exc, "cause", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


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
        key = PoolKey.derive(spec.identity, spec.payload_digest(), settings.actor)
        manager = ray.remote(PoolManager).options(
            name=key.name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_concurrency=16, max_restarts=0,
        ).remote(key, spec, settings)
        pool = cls(manager, key.name)
        existing = pool.describe()
        if existing["key"] != key:  # a 64-bit name collision: never serve another model
            raise PoolError(f"pool {key.name} serves {existing['key'].describe()}, "
                            f"not {key.describe()}: stop it first")
        if not ray.get(manager.is_started.remote()):
            started = time.perf_counter()
            num_actors = settings.num_actors or _default_num_actors()
            pool._call("start", num_actors, *start_arguments(spec))
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
            "placement": asdict(info["placement"]),
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
