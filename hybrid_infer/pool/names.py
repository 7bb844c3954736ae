"""The named pools of a Ray cluster: every pool's manager is a detached actor named
`pool-<key digest>` in the engine's namespace, and its actors `<pool>-actor-<i>`."""

from __future__ import annotations

from hybrid_infer.pool.orphans import ACTOR_INFIX
from hybrid_infer.runtime import NAMESPACE

POOL_PREFIX = "pool-"


def pool_names() -> list[str]:
    """The names of every pool's manager on the connected Ray cluster, any driver's."""
    from ray.util import list_named_actors

    return sorted(entry["name"] for entry in list_named_actors(all_namespaces=True)
                  if entry["namespace"] == NAMESPACE
                  and entry["name"].startswith(POOL_PREFIX)
                  and ACTOR_INFIX not in entry["name"])
