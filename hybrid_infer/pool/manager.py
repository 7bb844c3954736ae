"""The pool's control plane: `PoolManager`, a detached Ray actor, one per pool.

It keeps the pool's lifecycle; each concern it relies on lives in a module of its own:
- the weights' one object-store copy (pool/weights_copy.py), owned here so that it
  lives exactly as long as the pool, whichever driver created it;
- the live actors (pool/actor_set.py), and where they go (pool/placement.py decides,
  pool/placing.py places them);
- the pool's Flight entry point (pool/entry.py): the live actors' URIs, and leases;
- when to grow, shrink or scale down (pool/scaling.py, pure policies), applied by the
  control loop (pool/control.py) from samples of the actors' load;
- idle pools giving way to pools that cannot be placed (pool/pressure.py).

A pool lives as long as the jobs that need it. Running jobs hold leases on it
(pool/leases.py). After `idle_timeout_s` with no lease and no work, the manager scales
the pool down to `min_actors` (default 0) but stays: it is the pool's stable entry
point and keeps the weights' copy, so a DataFrame built earlier still finds it. An idle
pool also gives its actors back early when another pool cannot be placed. A job that
arrives (a new lease) or a client that finds no live actors scales it back up to
`num_actors`. Only an explicit stop (`pool stop`, Pool.stop) ends the manager.

A pool survives its manager: the actors are detached and keep serving the jobs in
flight; the next `Pool.get_or_create` starts a new manager, which puts the weights in
the object store again and adopts the live orphans (pool/orphans.py says why).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import replace

from hybrid_infer.errors import PoolError
from hybrid_infer.pool.actor_set import ActorSet, Member
from hybrid_infer.pool.control import ControlLoop, _cause
from hybrid_infer.pool.entry import serve_entry
from hybrid_infer.pool.leases import LeaseBook
from hybrid_infer.pool.orphans import adopt_orphans
from hybrid_infer.pool.placing import Placing
from hybrid_infer.pool.scaling import IdlePolicy, LoadPolicy
from hybrid_infer.pool.settings import PoolKey, PoolSettings, check_actor_count
from hybrid_infer.pool.weights_copy import WeightsCopy
from hybrid_infer.transport.probe import silent_servers

log = logging.getLogger(__name__)

#: the driver's lease while infer() builds a plan (Pool.lease); tasks hold their own
PLAN_LEASE_PREFIX = "plan-"
#: how long an actor may take to answer a heal's ping before it counts as lost: busy
#: actors answer at once (they serve calls concurrently)
PING_TIMEOUT_S = 30.0


class PoolManager(ControlLoop, Placing):
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
        #: num_actors given: the pool keeps that size (growing only up to max_actors)
        self._sized_by_user = settings.placement.num_actors is not None
        self.created_at = time.time()
        self._weights = WeightsCopy(spec)
        self._set = ActorSet()
        self._lock = threading.RLock()
        self._replaced = 0
        self._adopted = 0  # actors taken over from an earlier manager of this pool
        self._last_heal_s = None  # how long the last heal that replaced an actor took
        self._stopping = False
        self._last_change = self.created_at  # end of the last start/scale/heal
        self._last_used = 0.0  # the actors' latest work, as last sampled
        self._leases = LeaseBook()
        self._growing = False  # a scale-up for arriving work is under way
        self._token = secrets.token_urlsafe(32)
        self._load = LoadPolicy(floor=1, ceiling=None,
                                up_after_s=self.placement.grow_after_s,
                                down_after_s=self.placement.shrink_after_s)
        self._idle = IdlePolicy(self.placement.idle_timeout_s, self.placement.min_actors)
        self._busy_seen: dict[int, tuple[float, float]] = {}  # index -> (time, busy_s)
        self._said_idle: set[int] = set()  # dead actors already reported
        #: the pool's last size changes: (wall time, from, to, why), for `pool status`
        self._resizes: deque = deque(maxlen=20)
        self._wake = threading.Event()
        self._service = serve_entry(self, self._token)
        threading.Thread(target=self._control_loop, daemon=True, name="pool-control").start()

    # -- what the entry point (pool/entry.py) and the driver ask ----------------------
    def hold_lease(self, lease_id: str, ttl_s: float) -> None:
        """Take or renew a lease; a new one is a job arriving, so a pool scaled down
        starts growing back to num_actors now, in the background."""
        if self._leases.hold(lease_id, ttl_s):
            if not lease_id.startswith(PLAN_LEASE_PREFIX):
                # a task arrived: the plans that waited for their tasks are done waiting
                # (else a finished job's plan lease would keep an idle pool from yielding)
                self._leases.end_plans(PLAN_LEASE_PREFIX)
            self._wake.set()  # sample the load from now on
            self._grow_for_work()

    def release_lease(self, lease_id: str) -> None:
        self._leases.release(lease_id)

    def active_leases(self) -> int:
        return self._leases.active()

    def uris(self) -> list[str]:
        return self._set.uris()

    def address(self):
        """What a Spark task needs to use this pool (see transport/protocol.py)."""
        from hybrid_infer.transport.protocol import PoolAddress

        cert = None
        if self.actor_settings.tls_cert:
            with open(self.actor_settings.tls_cert, "rb") as handle:
                cert = handle.read()
        return PoolAddress(self.key.name, self._service.uri, tuple(self.uris()),
                           self._token, cert)

    def actors(self) -> list:
        # No lock: a job starting while a heal loads a replacement gets the live actors
        # now rather than waiting for the load.
        return self._set.handles()

    # -- lifecycle -------------------------------------------------------------------
    def is_started(self) -> bool:
        return self._weights.present

    def start(self, num_actors: int, payload=None, build_node: str | None = None) -> list:
        """Get the weights into the object store (owned here) and start the actors.

        `payload`: what the driver built (see registry.start_arguments); this manager
        puts it. Without one, a one-off task on `build_node` (the driver's node) builds
        it. Actors an earlier manager of this pool left behind are adopted meanwhile;
        the build is only waited for when an actor must be started (adopted ones hold
        their model already), so a pool that only lost its manager is back at once.
        """
        with self._lock:
            started = time.perf_counter()
            if not self._weights.present:
                if payload is None:
                    self._weights.submit_build(build_node)
                else:
                    self._weights.put(payload)
                self._adopt_orphans()
            try:
                self._scale_locked(num_actors, why="start")
            except BaseException:
                if not len(self._set):  # the next start builds again
                    self._weights.drop()
                raise
            self.placement = replace(self.placement, num_actors=num_actors)  # the busy size
            log.info("pool %s started: %d actor(s), %d weight bytes, in %.1f s (%s)",
                     self.key.name, len(self._set), self._weights.nbytes,
                     time.perf_counter() - started, self.key.describe())
            return self._set.handles()

    def _adopt_orphans(self) -> None:
        settings = self.actor_settings
        for orphan in adopt_orphans(self.key.name, self._token, settings.tls_cert,
                                    settings.tls_key,
                                    timeout_s=self.placement.place_timeout_s):
            self._set.add(Member(orphan.index, orphan.actor, orphan.uri))
        self._adopted = len(self._set)

    def heal(self) -> list:
        """Replace actors that died, and scale a pool that work finds scaled down back
        up to num_actors; returns the live set."""
        import ray

        with self._lock:
            if self._stopping:
                return []
            started = time.perf_counter()
            members = self._set.members()
            pings = [(member, member.actor.ping.remote()) for member in members]
            # a live process whose Flight server accepts nobody serves no task either
            silent = silent_servers(self.address(), self._set.uris())
            lost = []
            for member, ping in pings:
                try:
                    ray.get(ping, timeout=PING_TIMEOUT_S)
                    why = silent.get(member.uri)
                    if why:
                        raise ConnectionError(f"its Flight server does not answer ({why})")
                except Exception as exc:
                    self._replaced += 1
                    lost.append(member)
                    log.warning("pool %s: actor %d is lost, replacing it: %s", self.key.name,
                                member.index, _cause(exc))
                    # a hung actor would keep its name, its resources, and serve nobody
                    with contextlib.suppress(Exception):
                        ray.kill(member.actor, no_restart=True)
            wanted = max(len(members), self._busy_size())
            self._set.remove(member.index for member in lost)
            if len(self._set) < wanted:
                self._scale_locked(wanted, why="heal")
                seconds = time.perf_counter() - started
                if lost:
                    self._last_heal_s = round(seconds, 3)
                    log.warning("pool %s healed: %d actor(s) replaced in %.1f s",
                                self.key.name, len(lost), seconds)
                if wanted > len(members):
                    log.info("pool %s scaled up from %d to %d actor(s) in %.1f s: asked for "
                             "actors while scaled down", self.key.name, len(members),
                             wanted, seconds)
            return self._set.handles()

    def scale(self, num_actors: int) -> list:
        """Scale to `num_actors` now. 0 frees every actor until work arrives, when the
        pool scales back up to its num_actors; a larger size becomes its num_actors."""
        check_actor_count(num_actors, self.placement)
        with self._lock:
            before = len(self._set)
            self._scale_locked(num_actors)
            if num_actors:
                self.placement = replace(self.placement, num_actors=num_actors)
            log.info("pool %s scaled from %d to %d actor(s) on request%s", self.key.name,
                     before, len(self._set), "" if num_actors else
                     f"; it scales back to {self._busy_size()} when a job arrives")
            return self._set.handles()

    def _busy_size(self) -> int:
        """How many actors work gets: num_actors, within [min_actors, max_actors]."""
        return self.placement.bounded(self.placement.num_actors or max(1, len(self._set)))

    def _grow_for_work(self) -> None:
        """Scale up to the busy size in the background, unless already there or under way."""
        if (self._growing or self._stopping or not self.is_started()
                or len(self._set) >= self._busy_size()):
            return
        self._growing = True
        threading.Thread(target=self._grow, daemon=True, name="pool-grow").start()

    def _grow(self) -> None:
        try:
            with self._lock:
                before, wanted = len(self._set), self._busy_size()
                if self._stopping or before >= wanted:
                    return
                started = time.perf_counter()
                self._scale_locked(wanted, why="a job arrived")
                log.info("pool %s scaled up from %d to %d actor(s) in %.1f s: a job arrived",
                         self.key.name, before, wanted, time.perf_counter() - started)
        except Exception:  # the job's clients ask again (endpoints) and see the error
            log.exception("pool %s: scaling up for a job failed", self.key.name)
        finally:
            self._growing = False

    # -- the mechanism: placing and removing actors (pool/placing.py) ----------------
    def _scale_locked(self, num_actors: int, dead: set = frozenset(),
                      why: str = "asked") -> None:
        if not self._weights.present:
            raise PoolError("the pool has no weights yet: start it with Pool.get_or_create")
        check_actor_count(num_actors)
        self._note_resize(len(self._set), num_actors, why)
        if len(self._set) > num_actors:
            self._kill_and_wait(self._to_remove(len(self._set) - num_actors, dead))
        if len(self._set) < num_actors:
            self._place(num_actors - len(self._set))
        self._load.changed()
        self._last_change = time.time()

    def _note_resize(self, before: int, after: int, why: str) -> None:
        if before != after:
            self._resizes.append((round(time.time(), 3), before, after, why))


    def stop(self) -> int:
        """Kill every actor, then this manager. Returns how many actors were killed."""
        with self._lock:
            self._stopping = True
            self._wake.set()
            members = self._set.remove(self._set.indices())
            self._kill(members)
            self._weights.drop()
        threading.Thread(target=self._service.shutdown, daemon=True).start()
        return len(members)

    # -- reporting -------------------------------------------------------------------
    def describe(self) -> dict:
        return {"name": self.key.name, "key": self.key, "spec": self.spec,
                "actor_settings": self.actor_settings, "placement": self.placement,
                "created_at": self.created_at, "pid": os.getpid(),
                "weights_bytes": self._weights.nbytes, "replaced_actors": self._replaced,
                "adopted_actors": self._adopted, "last_heal_s": self._last_heal_s,
                "leases": self._leases.active(), "resizes": list(self._resizes)}
