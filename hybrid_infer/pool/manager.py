"""The pool's control plane: `PoolManager`, a detached Ray actor, one per pool.

It owns the object-store copy of the weights, so the copy lives exactly as long as the
pool, whichever driver created it. The weights are built by a one-off task it calls
(the task's worker exits after), so neither the driver nor the manager ever holds
torch or a copy of the weights.

It creates the pool's access token, starts each actor's Flight service
(`PoolActor.serve`) and serves Flight itself, as the pool's stable entry point: its
"endpoints" action returns the live actors' URIs, replacing dead actors (and scaling a
scaled-down pool back up) first when asked; its "lease" action records who is using
the pool.

A pool lives as long as the jobs that need it. Running jobs hold leases on it
(pool/leases.py): the driver's when infer() builds the plan, each task's while it
maps. After `idle_timeout_s` with no lease and no work, the manager scales the pool
down to `min_actors` (default 0) but stays: it is the pool's stable entry point and
keeps the weights' one object-store copy, so a DataFrame built earlier still finds
it. A job that arrives (a new lease) or a client that finds no live actors scales it
back up to `num_actors`. Only an explicit stop (`pool stop`, Pool.stop) ends the
manager; a plan run after that fails telling the user to run infer() again.

A pool survives its manager: the actors are detached and keep serving the jobs in
flight (they talk to the actors directly); the next `Pool.get_or_create` finds no
manager, starts one, which puts the weights in the object store again (the old copy
died with its owner) and adopts the live orphans (pool/orphans.py says why).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import replace

from hybrid_infer.errors import HybridInferError, PoolError, from_spark
from hybrid_infer.pool.leases import LeaseBook, LeaseRefused
from hybrid_infer.pool.orphans import actor_name, adopt_orphans, taken_indices
from hybrid_infer.pool.placement import gpus_per_actor, unplaced_message
from hybrid_infer.pool.settings import PoolKey, PoolSettings, check_actor_count
from hybrid_infer.runtime import NAMESPACE
from hybrid_infer.servable import payload_nbytes
from hybrid_infer.transport.probe import silent_servers
from hybrid_infer.transport.protocol import PoolAddress

log = logging.getLogger(__name__)

#: how long an actor may take to answer a heal's ping before it counts as lost: busy
#: actors answer at once (they serve calls concurrently)
PING_TIMEOUT_S = 30.0


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
        self._weights_ref = None  # set by start; owned by this actor
        self._weights_built = False  # the build task behind the ref has answered
        self._weights_bytes = 0
        self._actors: list = []
        self._indices: dict[str, int] = {}  # actor id -> its index in the actor names
        self._endpoints: dict[str, str] = {}  # actor id -> its Flight URI
        self._lock = threading.RLock()
        self._replaced = 0
        self._adopted = 0  # actors taken over from an earlier manager of this pool
        self._last_heal_s = None  # how long the last heal that replaced an actor took
        self._stopping = False
        self._last_change = self.created_at  # end of the last start/scale/heal
        self._leases = LeaseBook()
        self._growing = False  # a scale-up for arriving work is under way
        self._token = secrets.token_urlsafe(32)
        self._service = self._serve_flight()
        if self.placement.idle_timeout_s:
            threading.Thread(target=self._idle_reaper, daemon=True).start()

    # -- the pool's Flight entry point ---------------------------------------------------
    def _serve_flight(self):
        from hybrid_infer.actor.service import node_address
        from hybrid_infer.transport.server import FlightService

        return FlightService(None, token=self._token, host=node_address(),
                             port_range=self.placement.flight_port_range,
                             tls_cert=self.actor_settings.tls_cert, tls_key=self.actor_settings.tls_key,
                             actions={"endpoints": self._endpoints_action,
                                      "lease": self._lease_action}, max_workers=4)

    def _endpoints_action(self, body: bytes) -> bytes:
        """The live actors' URIs; with "heal", dead actors are replaced first and a pool
        scaled down (idle, or `pool scale 0`) scales back up: a client asking is work."""
        asked = json.loads(body or b"{}")
        actors = self.heal() if asked.get("heal") else self.actors()
        return json.dumps({"actors": self._uris(actors)}).encode()

    def _lease_action(self, body: bytes) -> bytes:
        """Take, renew or release a task's lease (transport/lease.py's request)."""
        asked = json.loads(body)
        if not isinstance(asked, dict):
            raise LeaseRefused("a lease request is a JSON object (transport/lease.py)")
        if asked.get("release"):
            self._leases.release(asked.get("id"))
        else:
            self.hold_lease(asked.get("id"), asked.get("ttl_s"))
        return json.dumps({"leases": self._leases.active()}).encode()

    def hold_lease(self, lease_id: str, ttl_s: float) -> None:
        """Take or renew a lease; a new one is a job arriving, so a pool scaled down
        starts growing back to num_actors now, in the background."""
        if self._leases.hold(lease_id, ttl_s):
            self._grow_for_work()

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
        Actors an earlier manager of this pool left behind are adopted meanwhile; the
        build is only waited for when an actor must be started (the adopted ones hold
        their model already), so a pool that only lost its manager is back at once.
        """
        import ray

        with self._lock:
            started = time.perf_counter()
            if self._weights_ref is None:
                if payload is None:
                    self._weights_ref = self._submit_build(build_node)
                else:
                    self._weights_ref = ray.put(payload)
                    self._weights_bytes = payload_nbytes(payload)
                    self._weights_built = True
                self._adopt_orphans()
            try:
                self._scale_locked(num_actors)
            except BaseException:
                if not self._actors:  # the next start builds again
                    self._weights_ref, self._weights_built = None, False
                raise
            self.placement = replace(self.placement, num_actors=num_actors)  # the busy size
            log.info("pool %s started: %d actor(s), %d weight bytes, in %.1f s (%s)",
                     self.key.name, len(self._actors), self._weights_bytes,
                     time.perf_counter() - started, self.key.describe())
            return list(self._actors)

    def _adopt_orphans(self) -> None:
        settings = self.actor_settings
        for orphan in adopt_orphans(self.key.name, self._token, settings.tls_cert,
                                    settings.tls_key,
                                    timeout_s=self.placement.place_timeout_s):
            actor_id = orphan.actor._actor_id.hex()
            self._indices[actor_id] = orphan.index
            self._endpoints[actor_id] = orphan.uri
            self._actors.append(orphan.actor)
        self._adopted = len(self._actors)

    def _submit_build(self, node_id: str):
        """The ref of the spec's payload (weights arrays), built by a one-off task."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # num_cpus=0: building must not wait behind actors holding every CPU;
        # max_calls=1: the worker (torch, a transient copy of the model) exits after.
        build = ray.remote(num_cpus=0, max_calls=1)(_build_payload).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        self._weights_built = False
        return build.remote(self.spec)

    def _await_weights(self) -> None:
        """Wait for the payload build (once): its errors and timeout are the pool's."""
        import ray

        if self._weights_ref is None:
            raise PoolError("the pool has no weights yet: start it with Pool.get_or_create")
        if self._weights_built:
            return
        timeout = self.placement.build_timeout_s
        try:
            arrays = ray.get(self._weights_ref, timeout=timeout)
        except ray.exceptions.RayTaskError as exc:
            raise unwrapped(exc) from None
        except ray.exceptions.GetTimeoutError:
            with contextlib.suppress(Exception):
                ray.cancel(self._weights_ref, force=True)
            raise PoolError(f"building the weights of {self.spec.identity} took over "
                            f"{timeout:.0f} s (build_timeout_s): raise build_timeout_s for a "
                            "large checkpoint on slow storage") from None
        # (arrays: read-only views of the object; not copied)
        self._weights_bytes, self._weights_built = payload_nbytes(arrays), True

    def actors(self) -> list:
        # No lock: a job starting while a heal loads a replacement gets the live actors
        # now rather than waiting for the load (copying a list is atomic under the GIL).
        return list(self._actors)

    def heal(self) -> list:
        """Replace actors that died, and scale a pool that work finds scaled down back
        up to num_actors; returns the live set."""
        import ray

        with self._lock:
            if self._stopping:
                return []
            started = time.perf_counter()
            pings = [(actor, actor.ping.remote()) for actor in self._actors]
            # a live process whose Flight server accepts nobody serves no task either
            silent = silent_servers(self.address(), self._uris(self._actors))
            live = []
            for actor, ping in pings:
                try:
                    ray.get(ping, timeout=PING_TIMEOUT_S)
                    why = silent.get(self._endpoints.get(actor._actor_id.hex()))
                    if why:
                        raise ConnectionError(f"its Flight server does not answer ({why})")
                    live.append(actor)
                except Exception as exc:
                    self._replaced += 1
                    log.warning("pool %s: actor %d is lost, replacing it: %s", self.key.name,
                                self._index_of(actor), _cause(exc))
                    # a hung actor would keep its name, its resources, and serve nobody
                    with contextlib.suppress(Exception):
                        ray.kill(actor, no_restart=True)
            lost = len(self._actors) - len(live)
            wanted = max(len(self._actors), self._busy_size())
            if len(live) < wanted:
                self._actors = live
                self._scale_locked(wanted)
                seconds = time.perf_counter() - started
                if lost:
                    self._last_heal_s = round(seconds, 3)
                    log.warning("pool %s healed: %d actor(s) replaced in %.1f s",
                                self.key.name, lost, seconds)
                if wanted > len(live) + lost:
                    log.info("pool %s scaled up from %d to %d actor(s) in %.1f s: asked for "
                             "actors while scaled down", self.key.name, len(live) + lost,
                             wanted, seconds)
            return list(self._actors)

    def scale(self, num_actors: int) -> list:
        """Scale to `num_actors` now. 0 frees every actor until work arrives, when the
        pool scales back up to its num_actors; a larger size becomes its num_actors."""
        check_actor_count(num_actors, self.placement)
        with self._lock:
            before = len(self._actors)
            self._scale_locked(num_actors)
            if num_actors:
                self.placement = replace(self.placement, num_actors=num_actors)
            log.info("pool %s scaled from %d to %d actor(s) on request%s", self.key.name,
                     before, len(self._actors), "" if num_actors else
                     f"; it scales back to {self._busy_size()} when a job arrives")
            return list(self._actors)

    def _busy_size(self) -> int:
        """How many actors work gets: num_actors, within [min_actors, max_actors]."""
        return self.placement.bounded(self.placement.num_actors or max(1, len(self._actors)))

    def _grow_for_work(self) -> None:
        """Scale up to the busy size in the background, unless already there or under way."""
        if (self._growing or self._stopping or not self.is_started()
                or len(self._actors) >= self._busy_size()):
            return
        self._growing = True
        threading.Thread(target=self._grow, daemon=True, name="pool-grow").start()

    def _grow(self) -> None:
        try:
            with self._lock:
                before, wanted = len(self._actors), self._busy_size()
                if self._stopping or before >= wanted:
                    return
                started = time.perf_counter()
                self._scale_locked(wanted)
                log.info("pool %s scaled up from %d to %d actor(s) in %.1f s: a job arrived",
                         self.key.name, before, wanted, time.perf_counter() - started)
        except Exception:  # the job's clients ask again (endpoints) and see the error
            log.exception("pool %s: scaling up for a job failed", self.key.name)
        finally:
            self._growing = False

    def _scale_locked(self, num_actors: int) -> None:
        import ray

        if self._weights_ref is None:
            raise PoolError("the pool has no weights yet: start it with Pool.get_or_create")
        check_actor_count(num_actors)
        if len(self._actors) > num_actors:
            self._kill_and_wait(self._actors[num_actors:])
            del self._actors[num_actors:]
        # names held by any actor of this pool (ours, or one still dying) are never reused
        used = {self._index_of(a) for a in self._actors} | set(taken_indices(self.key.name))
        index = 0
        new = []
        if len(self._actors) < num_actors:
            self._await_weights()
        while len(self._actors) + len(new) < num_actors:
            while index in used:
                index += 1
            used.add(index)
            try:
                new.append(self._spawn(index))
            except ray.exceptions.ActorAlreadyExistsError:  # taken since the listing
                continue
        if new:  # wait until they have loaded: a job should not race the model load
            timeout = self.placement.place_timeout_s
            settings = self.actor_settings
            try:
                uris = ray.get([actor.serve.remote(self._token, settings.tls_cert,
                                                   settings.tls_key,
                                                   self.placement.flight_port_range)
                                for actor in new],
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

    def _kill_and_wait(self, actors: list, timeout_s: float = 30.0) -> None:
        """Kill actors and wait until their names are free: ray.kill is asynchronous, and
        a scale-up soon after reuses the names (actor-0, actor-1...)."""
        import ray

        names = [f"{self.key.name}-actor-{self._index_of(actor)}" for actor in actors]
        for actor in actors:
            ray.kill(actor, no_restart=True)
            self._endpoints.pop(actor._actor_id.hex(), None)
            self._indices.pop(actor._actor_id.hex(), None)
        deadline = time.time() + timeout_s
        for name in names:
            while time.time() < deadline:
                try:
                    ray.get_actor(name, namespace=NAMESPACE)
                except ValueError:
                    break
                time.sleep(0.1)

    def _index_of(self, actor) -> int:
        return self._indices.get(actor._actor_id.hex(), -1)

    def _spawn(self, index: int):
        import ray

        actor_class = self.spec.actor_class()
        remote_cls = ray.remote(actor_class).options(
            name=actor_name(self.key.name, index),
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
                                  self.placement.num_gpus_per_actor, cluster_gpus())
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
        """Scale the pool down to min_actors after idle_timeout_s without work and
        without leases, whatever its actors' state; the manager stays (see the module)."""
        period = min(30.0, max(1.0, self.placement.idle_timeout_s / 4))
        while not self._stopping:
            time.sleep(period)
            try:
                self._reap_if_idle(timeout=max(5.0, period))
            except Exception:  # never let one bad round end the reaper
                log.exception("pool %s: the idle check failed; trying again in %.0f s",
                              self.key.name, period)

    def _reap_if_idle(self, timeout: float = 30.0) -> bool:
        """Scale down to min_actors when the pool has been idle past its timeout with no
        lease held; True if it scaled down.

        A dead actor does no work: it counts as idle (the next job heals it), and goes
        first. An actor that does not answer in `timeout` may be busy: not idle then.
        """
        import ray

        floor = self.placement.min_actors
        if len(self.actors()) <= floor or self._leases.active():
            return False
        refs = {}
        dead = set()
        for actor in self.actors():
            try:
                refs[actor.status.remote()] = actor
            except Exception as exc:  # a dead actor's handle may refuse the call itself
                dead.add(actor._actor_id.hex())
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
                dead.add(refs[ref]._actor_id.hex())
                log.warning("pool %s: actor %d counts as idle: %s", self.key.name,
                            self._index_of(refs[ref]), _cause(exc))
        # A start, scale or heal in progress holds the lock: that is not idleness.
        if not self.is_started() or not self._lock.acquire(blocking=False):
            return False
        try:
            idle = time.time() - max(last_used, self._last_change, self._leases.last_end)
            if (idle <= self.placement.idle_timeout_s or self._leases.active()
                    or self._stopping):
                return False
            before = len(self._actors)
            self._actors.sort(key=lambda actor: actor._actor_id.hex() in dead)  # dead last
            self._scale_locked(floor)
            log.info("pool %s idle for %.0f s with no lease (idle_timeout_s=%s): scaled "
                     "down from %d to %d actor(s); it scales back up when a job arrives",
                     self.key.name, idle, self.placement.idle_timeout_s, before, floor)
            return True
        finally:
            self._lock.release()

    # -- reporting -------------------------------------------------------------------
    def describe(self) -> dict:
        return {"name": self.key.name, "key": self.key, "spec": self.spec,
                "actor_settings": self.actor_settings, "placement": self.placement,
                "created_at": self.created_at, "pid": os.getpid(),
                "weights_bytes": self._weights_bytes, "replaced_actors": self._replaced,
                "adopted_actors": self._adopted, "last_heal_s": self._last_heal_s,
                "leases": self._leases.active()}


def _build_payload(spec):
    return spec.build_payload()


def _cause(exc: BaseException) -> str:
    """One line on why a Ray call failed (its first line: Ray's texts run long)."""
    text = str(getattr(exc, "cause", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def unwrapped(exc: Exception) -> Exception:
    """The engine's own error inside a Ray task/actor error, so its message stays short."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, HybridInferError) else exc


def cluster_gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0)


