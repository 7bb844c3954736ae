"""The pool's stable Flight entry point, served by its manager (no Ray on the client).

Actions:
- "endpoints": the live actors' URIs; with {"heal": true}, dead actors are replaced
  first and a pool scaled down (idle, or `pool scale 0`) scales back up: a client
  asking is work.
- "lease": take, renew or release a task's lease (transport/lease.py's request). The
  answer carries the live actors' URIs too, so running clients start using actors the
  pool grew and stop sending to the ones it retired.
"""

from __future__ import annotations

import json

from hybrid_infer.pool.leases import LeaseRefused


def serve_entry(manager, token: str):
    """Start the Flight service of `manager` (a PoolManager) on its node's address,
    accepting `token`."""
    from hybrid_infer.actor.service import node_address
    from hybrid_infer.transport.server import FlightService

    def endpoints(body: bytes) -> bytes:
        asked = json.loads(body or b"{}")
        if asked.get("heal"):
            manager.heal()
        return json.dumps({"actors": manager.uris()}).encode()

    def lease(body: bytes) -> bytes:
        asked = json.loads(body)
        if not isinstance(asked, dict):
            raise LeaseRefused("a lease request is a JSON object (transport/lease.py)")
        if asked.get("release"):
            manager.release_lease(asked.get("id"))
        else:  # the lease book validates the id and the time to live
            manager.hold_lease(asked.get("id"), asked.get("ttl_s"))
        return json.dumps({"leases": manager.active_leases(),
                           "actors": manager.uris()}).encode()

    settings = manager.actor_settings
    return FlightService(None, token=token, host=node_address(),
                         port_range=manager.placement.flight_port_range,
                         tls_cert=settings.tls_cert, tls_key=settings.tls_key,
                         actions={"endpoints": endpoints, "lease": lease}, max_workers=4)
