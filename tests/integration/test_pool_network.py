"""A real pool's servers facing a network (issue 18): its ports, its lease action, and
the manager replacing an actor whose Flight server went silent while its process
lives. Real Ray, real actors and model; no Spark.
"""

from __future__ import annotations

import json

import pytest

from hybrid_infer.models import ModelSpec
from hybrid_infer.pool.registry import Pool
from hybrid_infer.transport.client import action
from hybrid_infer.transport.probe import silent_servers

from faults import SMALL_MODEL, small_settings
from runtime_env import free_port_pair


def port_of(uri: str) -> int:
    return int(uri.rsplit(":", 1)[1])


def test_a_pool_listens_in_its_port_range_and_replaces_an_actor_whose_server_is_silent(
        ray_address, stop_new_pools):
    import ray

    first = free_port_pair()  # two actors and the manager: three ports; the third is
    port_range = (first, first + 2)  # rarely taken, and a retry picks another pair
    spec = ModelSpec(SMALL_MODEL, seed=181, weights="random")  # a pool of its own
    pool = Pool.get_or_create(spec, small_settings(flight_port_range=port_range))
    address = pool.address()
    assert sorted(port_of(uri) for uri in (address.manager, *address.actors)) == \
        list(range(first, first + 3))

    # The manager's lease action refuses a lease that would pin the pool forever.
    for ttl in ("NaN", "Infinity", '"30"'):
        body = f'{{"id": "task-x", "ttl_s": {ttl}}}'.encode()
        with pytest.raises(RuntimeError, match="LeaseRefused: a lease's ttl_s"):
            action(address, address.manager, "lease", body)
    assert json.loads(action(address, address.manager, "lease",
                             b'{"id": "task-x", "ttl_s": 5}'))["leases"] == 1

    # One actor's Flight server stops; its process lives and answers Ray.
    silent_uri = address.actors[0]
    victim = next(actor for actor in pool.actors()
                  if ray.get(actor.status.remote())["endpoint"] == silent_uri)
    ray.get(victim.__ray_call__.remote(lambda self: self._service.shutdown()))
    assert ray.get(victim.ping.remote()) is True
    assert list(silent_servers(address, list(address.actors))) == [silent_uri]

    healed = json.loads(action(address, address.manager, "endpoints", b'{"heal": true}'))
    assert len(healed["actors"]) == 2
    assert silent_servers(address, healed["actors"]) == {}
    assert pool.describe()["replaced_actors"] == 1
    with pytest.raises(ray.exceptions.RayActorError):  # killed, not left holding its CPU
        ray.get(victim.ping.remote(), timeout=60)
    # the replacement took a port of the range too (maybe the silent one's, freed)
    assert all(first <= port_of(uri) <= first + 2 for uri in healed["actors"])
