"""A Spark task's lease on its pool, held over Flight while the task maps (no Ray).

The pool's manager scales an idle pool down, but never while a job holds a lease on
it (pool/leases.py). `LeaseKeeper` takes the lease in the background as soon as a
PoolClient starts mapping, renews it every third of its time to live, and releases it
when the client closes. `stop` waits for the release (up to RELEASE_WAIT_S): a Spark
Python worker whose task failed exits at once, taking a background release with it,
and its pool would not give way to another pool until the lease expired.

Each answer lists the pool's live actors: that is how a running client learns of
actors the pool grew, or retired, under its load. It is best effort: the data path
never waits for it, and a manager that does not answer only costs the pool its
protection (a pool scaled down meanwhile scales back up when the client asks for
endpoints).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Callable

log = logging.getLogger(__name__)

#: A task's lease lasts this long unless renewed: a task that died without releasing it
#: (Spark kills a failed stage's other tasks) stops counting then, and until then its
#: pool does not give way to another pool that needs room.
LEASE_TTL_S = 15.0
#: How long a closing client waits for its lease's release; a manager that did not
#: answer the last renewal is not waited for.
RELEASE_WAIT_S = 2.0


def lease_request(lease_id: str, ttl_s: float | None) -> bytes:
    """The "lease" action's body: take or renew for ttl_s, or release (ttl_s None)."""
    asked = {"id": lease_id, "release": True} if ttl_s is None else {"id": lease_id,
                                                                      "ttl_s": ttl_s}
    return json.dumps(asked).encode()


class LeaseKeeper:
    """Holds one lease while a client maps. `send(body)` runs the manager's "lease"
    action (see client.action)."""

    def __init__(self, send: Callable[[bytes], bytes], pool_name: str,
                 ttl_s: float = LEASE_TTL_S, on_answer: Callable[[dict], None] | None = None):
        self._send = send
        self._on_answer = on_answer  # the manager's answer to a take or renewal
        self._pool_name = pool_name
        self._ttl_s = ttl_s
        self.lease_id = f"task-{uuid.uuid4().hex}"
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._answering = True  # the manager answered the last call

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._keep, daemon=True, name="pool-lease")
            self._thread.start()

    def stop(self, wait_s: float = RELEASE_WAIT_S) -> None:
        """Release the lease; wait up to `wait_s` for the manager to take the release,
        unless it did not answer the last call (a task's end never waits on a dead one)."""
        self._stopped.set()
        if self._thread is not None and self._answering:
            self._thread.join(wait_s)

    def _keep(self) -> None:
        while True:
            self._call(self._ttl_s)
            if self._stopped.wait(self._ttl_s / 3):
                break
        self._call(None)

    def _call(self, ttl_s: float | None) -> None:
        try:
            answer = self._send(lease_request(self.lease_id, ttl_s))
            self._answering = True
            if ttl_s and answer and self._on_answer is not None:
                self._on_answer(json.loads(answer))
        except Exception as exc:  # noqa: BLE001 - best effort, see the module's docstring
            self._answering = False
            log.info("pool %s: could not %s this task's lease: %s", self._pool_name,
                     "renew" if ttl_s else "release", str(exc).splitlines()[0][:200]
                     if str(exc) else type(exc).__name__)
