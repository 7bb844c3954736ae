"""A pool's actors by name, and what a replacement manager does with those it finds.

Pool actors are detached and named `{pool}-actor-{i}` in the engine's namespace, so
they outlive a manager that dies (kill -9, its node lost) and keep their names. The
next `Pool.get_or_create` starts a new manager under the pool's name; before it starts
any actor, it adopts the orphans it finds here.

Why adopt them rather than kill and replace them: a job in flight streams straight to
the actors with the old manager's token and can never learn a new manager's address.
Adopting keeps those jobs running: the new manager calls each orphan's `serve` with
its own token, and the actor's Flight service then accepts both tokens (old jobs go
on, new jobs use the new token). Killing the orphans would fail every such job and
reload every model for nothing. An orphan that does not answer within the timeout (the
pool's place_timeout_s: one may still be loading its model) is killed instead (a hung
actor holds its name, its CPUs or GPU, and serves nobody).

Spawning never reuses a taken name either: an index is taken while any actor holds
its name (an orphan being killed, a lost actor whose death Ray has not finished).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from hybrid_infer.runtime import NAMESPACE

log = logging.getLogger(__name__)

ACTOR_INFIX = "-actor-"


def actor_name(pool_name: str, index: int) -> str:
    return f"{pool_name}{ACTOR_INFIX}{index}"


def taken_indices(pool_name: str) -> dict[int, str]:
    """index -> name of every live actor named after this pool, whoever manages it."""
    from ray.util import list_named_actors

    prefix = pool_name + ACTOR_INFIX
    found = {}
    for entry in list_named_actors(all_namespaces=True):
        name = entry["name"]
        if entry["namespace"] == NAMESPACE and name.startswith(prefix):
            suffix = name[len(prefix):]
            if suffix.isdigit():
                found[int(suffix)] = name
    return found


@dataclass
class Adopted:
    index: int
    actor: object  # its Ray handle
    uri: str  # its Flight service


def adopt_orphans(pool_name: str, token: str, tls_cert: str | None, tls_key: str | None,
                  timeout_s: float) -> list[Adopted]:
    """Take over the live actors an earlier manager of this pool left behind.

    Each one that answers `serve` (now also accepting `token`) within `timeout_s` is
    adopted; the others are killed.
    """
    import ray

    handles = {}
    for index, name in sorted(taken_indices(pool_name).items()):
        with contextlib.suppress(ValueError):  # died since it was listed
            handles[index] = ray.get_actor(name, namespace=NAMESPACE)
    if not handles:
        return []
    calls = {index: actor.serve.remote(token, tls_cert, tls_key)
             for index, actor in handles.items()}
    ray.wait(list(calls.values()), num_returns=len(calls), timeout=timeout_s)
    adopted = []
    for index, ref in calls.items():
        try:
            uri = ray.get(ref, timeout=0)
        except Exception as exc:  # dead, or no answer in time
            log.warning("pool %s: orphaned actor %d does not answer (%s: %s): killing it",
                        pool_name, index, type(exc).__name__,
                        (str(exc).splitlines() or [""])[0][:200])
            with contextlib.suppress(Exception):
                ray.kill(handles[index], no_restart=True)
            continue
        adopted.append(Adopted(index, handles[index], uri))
    if adopted:
        log.warning("pool %s: a new manager adopted %d actor(s) its previous manager left "
                    "(indices %s)", pool_name, len(adopted), [a.index for a in adopted])
    return adopted
