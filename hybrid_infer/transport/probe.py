"""Which pool servers answer over Flight: the manager's check beyond Ray's ping.

An actor's process can live, and answer Ray, while its Flight server accepts nobody
(gRPC's accept loop stops for good after the process ran out of file descriptors;
issue 18). Spark tasks reach actors only over Flight, so the manager's heal pings each
actor there too and replaces one that does not answer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow.flight as flight

from hybrid_infer.transport.client import call_options, connect
from hybrid_infer.transport.protocol import PoolAddress

#: A server that answers nothing within this long counts as silent.
FLIGHT_PING_TIMEOUT_S = 10.0


def silent_servers(address: PoolAddress, uris: list[str],
                   timeout_s: float = FLIGHT_PING_TIMEOUT_S) -> dict[str, str]:
    """uri -> why, for each of `uris` whose Flight server does not answer a ping within
    `timeout_s`. A server that answers with an error (busy, or refusing the token)
    answers: it is alive."""
    if not uris:
        return {}
    with ThreadPoolExecutor(min(16, len(uris)), thread_name_prefix="flight-probe") as pool:
        reasons = dict(zip(uris, pool.map(lambda uri: _silence(address, uri, timeout_s),
                                           uris)))
    return {uri: why for uri, why in reasons.items() if why}


def _silence(address: PoolAddress, uri: str, timeout_s: float) -> str | None:
    client = connect(uri, address)
    try:
        list(client.do_action(flight.Action("ping", b""), call_options(address, timeout_s)))
        return None
    except flight.FlightError as exc:
        text = str(exc)
        if "hybrid_infer pool:" in text or isinstance(exc, flight.FlightServerError):
            return None  # the server itself answered (busy, or another token)
        return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
