"""The Flight transport on its own: real Flight servers, no Ray, no JVM (fast).

The client's order, window, resend and endpoint refresh, the token, TLS, and failing
fast on an address that does not answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from hybrid_infer.errors import PoolError, PoolTimeoutError
from hybrid_infer.transport.client import PoolClient, action
from hybrid_infer.transport.protocol import PoolAddress, dumps_options, encode_header
from hybrid_infer.transport.server import FlightService

import flight_servers

TOKEN = "t0ken-for-tests"
from paths import SUPPORT as HERE


def batches(n: int, rows: int = 3):
    return [pa.RecordBatch.from_arrays([pa.array(range(i * rows, (i + 1) * rows), pa.int64())],
                                       names=["x"]) for i in range(n)]


def header(**options) -> bytes:
    return encode_header("echo", dumps_options(options))


def address(actors, manager="grpc+tcp://127.0.0.1:1", token=TOKEN, cert=None) -> PoolAddress:
    return PoolAddress("pool-test", manager, tuple(actors), token, cert)


class Manager:
    """A real Flight server answering "endpoints" with the list the test sets; with
    `leases`, "lease" too (keeping each request: its answer lists the actors, which a
    client then uses)."""

    def __init__(self, actors, leases: bool = False):
        self.actors = list(actors)
        self.calls = 0
        self.leases: list[dict] = []
        actions = {"endpoints": self._endpoints, **({"lease": self._lease} if leases else {})}
        self.server = FlightService(None, token=TOKEN, actions=actions)

    def _endpoints(self, body: bytes) -> bytes:
        self.calls += 1
        return json.dumps({"actors": self.actors}).encode()

    def _lease(self, body: bytes) -> bytes:
        self.leases.append(json.loads(body))
        return json.dumps({"actors": self.actors}).encode()


@pytest.fixture
def servers():
    with flight_servers.started(TOKEN) as make:
        yield make


def out_of_process(delay_s: float):
    process = subprocess.Popen([sys.executable, os.path.join(HERE, "flight_servers.py"), TOKEN,
                                str(delay_s)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": HERE})
    return process, process.stdout.readline().strip()


def map_killing(client, doomed, payloads, after: int = 5) -> pa.Table:
    """Everything `client` maps, with the `doomed` server process killed after the
    `after`th result."""
    out = []
    for n, result in enumerate(client.map(payloads)):
        out.append(result)
        if n == after:
            doomed.kill()
    return pa.Table.from_batches(out)


def test_results_come_back_in_input_order_from_least_loaded_actors(servers):
    (a, ha), (b, hb) = servers(0.01), servers(0.03)  # b is slower: answers out of turn
    client = PoolClient(address([a.uri, b.uri]), header(), max_in_flight=2)
    results = list(client.map(batches(40)))
    got = pa.Table.from_batches(results)
    assert got.column("x").to_pylist() == list(range(120))
    assert ha.batches + hb.batches == 40 and ha.batches > hb.batches > 0  # least-loaded
    assert ha.headers == hb.headers == 1  # options once per stream, not per batch


def test_a_stream_that_carried_no_batch_is_ended_by_its_actor_not_cancelled(servers):
    """A task with fewer batches than the pool has actors leaves streams unused: each
    must end at once (it held every such task for 5 s, then was cancelled)."""
    from hybrid_infer.transport.client import CONNECT_TIMEOUT_S, _Stream

    server, _ = servers(0.0)
    stream = _Stream(server.uri, address([server.uri]), header(), CONNECT_TIMEOUT_S)
    assert stream.finish() is True


def test_in_flight_window_per_actor_is_bounded(servers):
    _, handler = servers(0.02)
    (server, _) = (_, handler)
    uri = f"grpc+tcp://127.0.0.1:{handler.port}"
    for window in (1, 3):
        handler.most_at_once = 0
        list(PoolClient(address([uri]), header(), max_in_flight=window).map(batches(12)))
        assert handler.most_at_once == window


def test_an_actor_killed_mid_stream_has_its_batches_resent_and_endpoints_refreshed(servers):
    doomed, doomed_uri = out_of_process(0.05)
    try:
        survivor, handler = servers(0.05)
        replacement, replacement_handler = servers(0.0)
        manager = Manager([survivor.uri, replacement.uri])  # after the heal
        client = PoolClient(address([doomed_uri, survivor.uri], manager.server.uri), header(),
                            max_in_flight=2)
        got = map_killing(client, doomed, batches(60))
        assert got.column("x").to_pylist() == list(range(180))  # nothing lost nor doubled
        assert client.resent >= 1 and manager.calls >= 1 and client.refreshes >= 1
        assert replacement_handler.batches > 0  # the refreshed list was used
        assert int(doomed_uri.rsplit(":", 1)[1]) in set(got.column("port").to_pylist())
    finally:
        doomed.kill()
        doomed.wait()
        manager.server.shutdown()


def test_with_every_actor_dead_the_client_waits_for_the_managers_list(servers):
    doomed, doomed_uri = out_of_process(0.0)
    doomed.kill()
    doomed.wait()
    replacement, handler = servers()
    manager = Manager([replacement.uri])
    try:
        client = PoolClient(address([doomed_uri], manager.server.uri), header())
        got = pa.Table.from_batches(list(client.map(batches(5))))
        assert got.column("x").to_pylist() == list(range(15)) and handler.batches == 5
    finally:
        manager.server.shutdown()


def test_a_dead_manager_fails_nothing_while_live_actors_remain(servers):
    doomed, doomed_uri = out_of_process(0.02)
    try:
        survivor, handler = servers(0.02)
        dead_manager = "grpc+tcp://127.0.0.1:9"  # discard port: nothing listens
        client = PoolClient(address([doomed_uri, survivor.uri], dead_manager), header())
        got = map_killing(client, doomed, batches(40))
        assert got.column("x").to_pylist() == list(range(120))  # nothing lost nor doubled
        assert client.resent >= 1 and handler.batches > 20
    finally:
        doomed.kill()
        doomed.wait()


def test_a_client_that_ends_has_released_its_lease(servers):
    """A failed Spark task's Python worker exits right after its error: a release left to
    a background thread never reached the manager, and the pool looked busy to pools
    that needed its room for the lease's whole time to live."""
    server, _ = servers(0.01)
    manager = Manager([server.uri], leases=True)
    try:
        client = PoolClient(address([server.uri], manager.server.uri), header())
        with pytest.raises(KeyError):  # the served code's error ends the task
            list(client.map(batches(3) + [pa.RecordBatch.from_arrays(
                [pa.array([-1], pa.int64())], names=["x"])]))
        assert manager.leases and manager.leases[-1].get("release") is True, manager.leases
        assert len({lease["id"] for lease in manager.leases}) == 1
    finally:
        manager.server.shutdown()


def test_an_actor_that_missed_a_ping_is_pinged_again_when_the_manager_is_down(servers):
    """A loaded host's actor can miss one ping (4 s) while serving other tasks: with the
    manager's host down it is the only actor left, so it is asked once more."""
    pings = []

    def slow_first_ping(body: bytes) -> bytes:
        pings.append(time.monotonic())
        if len(pings) == 1:
            time.sleep(1.5)  # past the client's connect timeout
        return b"ok"

    server, handler = servers(0.0, actions={"ping": slow_first_ping})
    dead_manager = "grpc+tcp://127.0.0.1:9"  # discard port: nothing listens
    client = PoolClient(address([server.uri], dead_manager), header(), connect_timeout_s=0.5)
    got = pa.Table.from_batches(list(client.map(batches(4))))
    assert got.column("x").to_pylist() == list(range(12)) and handler.batches == 4
    assert len(pings) >= 2


def test_with_every_actor_and_the_manager_gone_the_job_fails_after_one_more_ping():
    client = PoolClient(address(["grpc+tcp://127.0.0.1:9"], "grpc+tcp://127.0.0.1:9"),
                        header(), connect_timeout_s=0.5)
    with pytest.raises(PoolError, match="do not answer"):
        list(client.map(batches(2)))


def test_a_server_adopted_by_a_new_manager_accepts_both_managers_tokens(servers):
    server, handler = servers(0.01)
    old = PoolClient(address([server.uri]), header())
    results = old.map(batches(20))
    first = [next(results) for _ in range(5)]  # a job in flight with the old token
    server.accept_token("new-managers-token")
    first += list(results)
    assert pa.Table.from_batches(first).column("x").to_pylist() == list(range(60))
    for token in (TOKEN, "new-managers-token"):
        got = list(PoolClient(address([server.uri], token=token), header()).map(batches(2)))
        assert pa.Table.from_batches(got).column("x").to_pylist() == list(range(6))
    with pytest.raises(PoolError, match="refused this client's token"):
        list(PoolClient(address([server.uri], token="wrong"), header()).map(batches(1)))


def test_an_unreachable_pool_fails_within_seconds_naming_the_address():
    dead = "grpc+tcp://127.0.0.1:9"  # discard port: nothing listens
    started = time.perf_counter()
    with pytest.raises(PoolError) as caught:
        list(PoolClient(address([dead], manager="grpc+tcp://192.0.2.1:4000"), header(),
                        connect_timeout_s=2).map(batches(2)))
    assert time.perf_counter() - started < 10
    assert "192.0.2.1:4000" in str(caught.value) and "stopped" in str(caught.value)


def test_a_stopped_pool_says_so():
    manager = Manager([])
    try:
        with pytest.raises(PoolError, match="no live actors"):
            list(PoolClient(address(["grpc+tcp://127.0.0.1:9"], manager.server.uri),
                            header()).map(batches(2)))
    finally:
        manager.server.shutdown()


def test_a_wrong_or_missing_token_is_refused(servers):
    server, handler = servers()
    for token in ("wrong", ""):
        with pytest.raises(PoolError, match="refused this client's token"):
            list(PoolClient(address([server.uri], token=token), header()).map(batches(1)))
        with pytest.raises(flight.FlightUnauthenticatedError, match="wrong access token"):
            list(flight.FlightClient(server.uri).do_action(flight.Action("ping", b"")))
    assert handler.batches == 0


def test_errors_of_the_served_code_keep_their_type(servers):
    server, _ = servers()
    bad = [pa.RecordBatch.from_arrays([pa.array([-1], pa.int64())], names=["x"])]
    with pytest.raises(KeyError, match="row -1 is refused"):
        list(PoolClient(address([server.uri]), header()).map(batches(2) + bad))
    with pytest.raises(ValueError, match="no such model here"):
        list(PoolClient(address([server.uri]), encode_header("fail")).map(batches(1)))


def test_a_timeout_names_batch_timeout_s(servers):
    server, _ = servers()
    with pytest.raises(PoolTimeoutError, match="batch_timeout_s"):  # raised where it happens
        list(PoolClient(address([server.uri]), header(delay_s=2), timeout_s=0.2)
             .map(batches(1)))


def test_tls_with_a_self_signed_certificate(servers, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server, handler = servers(tls_cert=str(cert), tls_key=str(key))
    assert server.uri.startswith("grpc+tls://")
    pem = cert.read_bytes()
    got = list(PoolClient(address([server.uri], cert=pem), header()).map(batches(3)))
    assert pa.Table.from_batches(got).column("x").to_pylist() == list(range(9))
    with pytest.raises(PoolError, match="refused or closed the connection"):  # no cert
        list(PoolClient(address([server.uri]), header(), connect_timeout_s=2).map(batches(1)))
    assert action(address([server.uri], cert=pem), server.uri, "ping") == b"ok"


def test_the_task_side_imports_no_ray(tmp_path):
    blocker = tmp_path / "ray"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('no Ray on this executor')\n")
    code = ("import sys; import hybrid_infer.transport.client, hybrid_infer.modes.hybrid, "
            "hybrid_infer.batch_udf, hybrid_infer.modes.raydp; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
