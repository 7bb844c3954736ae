"""Sending Arrow batches from a Spark task to the pool: least-loaded, bounded, retried.

Each Spark task runs one Dispatcher. It keeps at most `max_in_flight` batches in
flight per actor (so object-store and actor memory stay bounded whatever the data
size), sends each batch to the actor with the fewest of this task's batches in flight,
yields results in input order, and resends a batch whose actor died to a live actor
at once, while the pool replaces the dead one in the background (a replacement takes a
model load; the job should not wait for it while other actors are alive).
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Iterable, Iterator

import pyarrow as pa

from hybrid_infer.errors import PoolError


@dataclass
class _InFlight:
    payload: pa.RecordBatch
    actor_id: object
    ref: object
    attempts: int = 1


class Dispatcher:
    def __init__(self, pool, options, *, max_in_flight: int = 2, timeout_s: float = 600.0,
                 max_attempts: int = 4):
        self._pool = pool
        self._options = options
        self._max_in_flight = max_in_flight
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._actors = pool.actors()
        if not self._actors:
            raise PoolError(f"pool {pool.name!r} has no actors: scale it up "
                            "(hybrid-infer pool scale) or start it again")
        self._load = {actor._actor_id: 0 for actor in self._actors}
        self._healing = None  # the pool's heal call in flight, if any
        self.resent = 0

    def map(self, payloads: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Results for `payloads`, one batch each, in the same order."""
        window: collections.deque[_InFlight] = collections.deque()
        for payload in payloads:
            while len(window) >= self._max_in_flight * len(self._actors):
                yield self._collect(window.popleft())
            window.append(self._submit(payload))
        while window:
            yield self._collect(window.popleft())

    def _submit(self, payload: pa.RecordBatch, attempts: int = 1) -> _InFlight:
        self._take_healed_actors()
        lowest = min(self._load.values())
        actor = random.choice([a for a in self._actors if self._load[a._actor_id] == lowest])
        self._load[actor._actor_id] += 1
        ref = actor.infer.remote(payload, self._options)
        return _InFlight(payload, actor._actor_id, ref, attempts)

    def _collect(self, item: _InFlight) -> pa.RecordBatch:
        import ray

        while True:
            try:
                result = ray.get(item.ref, timeout=self._timeout_s)
                if item.actor_id in self._load:
                    self._load[item.actor_id] -= 1
                return result
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(
                    f"a batch of {item.payload.num_rows} rows got no answer from the pool "
                    f"within {self._timeout_s} s (batch_timeout_s); raise it or check the pool "
                    "with `hybrid-infer pool status`") from None
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if item.attempts >= self._max_attempts:
                    raise PoolError(f"a batch failed on {item.attempts} actors in a row; "
                                    "the pool keeps losing actors") from None
                self._lose_actor(item.actor_id)
                self.resent += 1
                item = self._submit(item.payload, item.attempts + 1)

    def _lose_actor(self, actor_id) -> None:
        """Stop sending to a dead actor; heal in the background while others are alive."""
        self._actors = [a for a in self._actors if a._actor_id != actor_id]
        self._load.pop(actor_id, None)
        if not self._actors:
            self._healing = None
            self._use_actors(self._pool.heal())  # nothing left: wait for replacements
        elif self._healing is None:
            self._healing = self._pool.heal_async()

    def _take_healed_actors(self) -> None:
        import ray

        if self._healing is None or not ray.wait([self._healing], timeout=0)[0]:
            return
        healing, self._healing = self._healing, None
        try:
            self._use_actors(ray.get(healing))
        except ray.exceptions.RayActorError:
            raise PoolError(f"pool {self._pool.name!r} was stopped or its manager died: "
                            "start it again (hybrid-infer pool start, or run the job "
                            "again)") from None

    def _use_actors(self, actors: list) -> None:
        self._actors = actors
        if not self._actors:
            raise PoolError(f"pool {self._pool.name!r} has no live actors (it was stopped): "
                            "start it again (hybrid-infer pool start, or run the job again)")
        self._load = {a._actor_id: self._load.get(a._actor_id, 0) for a in self._actors}
