"""A pool's servers face a network (issue 18, item 6): fast loopback tests, no Ray.

Each test plays one client that misbehaves (with or without the token) and checks
that the server bounds it, refuses it as that request's error, and keeps serving.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from hybrid_infer.errors import PoolRequestError
from hybrid_infer.pool.leases import LeaseBook, LeaseRefused
from hybrid_infer.transport.client import PoolClient, action, call_options
from hybrid_infer.transport.gate import PortRangeExhausted, parse_port_range
from hybrid_infer.transport.probe import silent_servers
from hybrid_infer.transport.protocol import PoolAddress, dumps_options, encode_header
from hybrid_infer.transport.server import FlightService

import flight_servers
from runtime_env import free_port_pair

TOKEN = "t0ken-for-network-tests"
SERVER_SOURCE = os.path.dirname(os.path.abspath(flight_servers.__file__))


def address(uri: str, token: str = TOKEN) -> PoolAddress:
    return PoolAddress("pool-test", "grpc+tcp://127.0.0.1:1", (uri,), token)


def xs(n: int, rows: int = 3):
    return [pa.RecordBatch.from_arrays([pa.array(range(i * rows, (i + 1) * rows), pa.int64())],
                                       names=["x"]) for i in range(n)]


def until(condition, timeout_s: float = 60.0, what: str = "the condition"):
    """Poll `condition` until true; fail naming `what` after a generous deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.05)


@pytest.fixture
def servers():
    with flight_servers.started(TOKEN) as make:
        yield make


def exchange(server, header: bytes, token: str = TOKEN):
    client = flight.FlightClient(server.uri)
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(header),
                                        call_options(address(server.uri, token)))
    return client, writer, reader


def closed_by_peer(sock: socket.socket, timeout_s: float = 60.0) -> bool:
    """Read (the server's greeting, if any) until the peer closes; False on timeout."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    return True


def answers_ok(server) -> bool:
    got = list(PoolClient(address(server.uri), encode_header("echo")).map(xs(2)))
    return pa.Table.from_batches(got).column("x").to_pylist() == list(range(6))


# -- connections --------------------------------------------------------------------------
def test_connections_past_the_bound_are_closed_and_the_server_serves_after(servers):
    server, _ = servers(max_connections=4)
    port = int(server.uri.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    until(lambda: server.gate.open_connections == 4, what="4 connections held")
    extra = socket.create_connection(("127.0.0.1", port))
    assert closed_by_peer(extra)  # closed by the gate at once
    assert server.gate.refused >= 1
    # a client the gate refuses is told so, with the server's address
    with pytest.raises(ConnectionError, match=f"the pool server at {re.escape(server.uri)} "
                                              "refused or closed the connection.*MAX_CONNECTIONS"):
        action(address(server.uri), server.uri, "ping", connect_timeout_s=5)
    for sock in held + [extra]:
        sock.close()
    until(lambda: server.gate.open_connections == 0, what="the gate freeing connections")
    assert answers_ok(server)


def test_after_running_out_of_file_descriptors_the_server_accepts_again(tmp_path):
    """The attack that stopped gRPC's accept loop for good: more connections than the
    process has file descriptors, then all closed. The gate (asyncio) keeps accepting."""
    code = (f"import resource, sys; sys.path.insert(0, {SERVER_SOURCE!r})\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
            "import flight_servers\n"
            f"server, _ = flight_servers.start({TOKEN!r}, 0.0, max_connections=100000)\n"
            "print(server.uri, flush=True)\nserver.serve()\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        uri = process.stdout.readline().strip()
        port = int(uri.rsplit(":", 1)[1])
        attack = []
        for _ in range(600):  # well past 256 descriptors
            try:
                attack.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        time.sleep(1)  # let the server hit its limit (what follows only polls)
        for sock in attack:
            sock.close()
        assert process.poll() is None
        # polled over raw TCP (gRPC's client backs off for minutes after failed connects)
        until(lambda: _greets(port), what="the server greeting a connection after the attack")
        assert action(address(uri), uri, "ping") == b"ok"
    finally:
        process.kill()
        process.wait()


def _greets(port: int) -> bool:
    """A new connection gets the gRPC server's first bytes (its HTTP/2 settings)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            return bool(sock.recv(1))
    except OSError:
        return False


def test_an_idle_connection_is_closed_but_a_slow_batch_is_answered(servers):
    # 2 s: a client's own pause between its first ping and its first batch (a loaded
    # machine) must not look idle; the batch then computes for longer than that
    server, _ = servers(idle_timeout_s=2.0)
    port = int(server.uri.rsplit(":", 1)[1])
    silent = socket.create_connection(("127.0.0.1", port))
    assert closed_by_peer(silent)  # the gate closed it
    assert server.gate.timed_out >= 1
    slow = PoolClient(address(server.uri), encode_header("echo", dumps_options({"delay_s": 5})))
    got = pa.Table.from_batches(list(slow.map(xs(2))))  # silent for 5 s while computing
    assert got.column("x").to_pylist() == list(range(6))


# -- calls and streams ---------------------------------------------------------------------
def test_calls_past_the_bound_are_refused_with_a_clear_error(servers):
    server, _ = servers(max_calls=2)
    open_streams = [exchange(server, encode_header("echo")) for _ in range(2)]
    until(lambda: server._gatekeeper.running == 2, what="two streams running")
    with pytest.raises(flight.FlightUnavailableError, match="MAX_CALLS"):
        list(flight.FlightClient(server.uri).do_action(
            flight.Action("ping", b""), call_options(address(server.uri))))
    for client, writer, _ in open_streams:
        writer.done_writing()
        client.close()
    until(lambda: server._gatekeeper.running == 0, what="the streams ending")
    assert answers_ok(server)


def test_a_stream_that_never_reads_holds_a_bounded_number_of_batches(servers):
    release = threading.Event()

    class Blocking(flight_servers.EchoHandler):
        def __call__(self, kind, options):
            serve = super().__call__(kind, options)

            def blocked(batch):
                release.wait(60)
                return serve(batch)
            return blocked

    handler = Blocking()
    server = FlightService(handler, token=TOKEN, max_in_flight_per_stream=4)
    try:
        client, writer, reader = exchange(server, encode_header("echo"))
        sending = threading.Thread(target=lambda: [writer.write_batch(b) for b in xs(20)])
        writer.begin(xs(1)[0].schema)
        sending.start()
        until(lambda: server.held == 4, what="4 batches held")
        time.sleep(0.5)  # room for more, were they read
        assert server.held == 4
        release.set()
        sending.join()
        writer.done_writing()
        got = reader.read_all()
        assert got.column("x").to_pylist() == list(range(60))
        assert server.held_peak == 4
        client.close()
    finally:
        release.set()
        server.shutdown()


# -- request batches ------------------------------------------------------------------------
def offsets_out_of_order() -> pa.RecordBatch:
    """A binary column whose second value runs backwards (offsets 0, 10, 5, 10): the
    first and last offsets fit the data, so only full validation sees it; reading the
    second value would read 2**64 - 5 bytes."""
    offsets = pa.py_buffer(pa.array([0, 10, 5, 10], pa.int32()).buffers()[1])
    column = pa.Array.from_buffers(pa.binary(), 3, [None, offsets, pa.py_buffer(b"0" * 10)])
    return pa.RecordBatch.from_arrays([column], names=["x"])


def test_a_malformed_batch_is_that_requests_error_and_the_server_serves_on(servers):
    server, handler = servers()
    # the request's own error (a transport failure would ask the absent manager)
    with pytest.raises(PoolRequestError, match="a malformed Arrow request batch .*PoolClient"):
        list(PoolClient(address(server.uri), encode_header("echo")).map(
            [offsets_out_of_order()]))
    assert handler.batches == 0  # never reached the served code
    assert answers_ok(server)


def test_a_batch_over_its_rows_times_max_row_bytes_is_refused(servers):
    server, handler = servers()
    big = pa.RecordBatch.from_arrays([pa.array([b"0" * (3 << 20)], pa.binary())], names=["x"])
    limited = encode_header("echo", max_row_bytes=1 << 20)
    with pytest.raises(PoolRequestError, match="max_row_bytes=1048576.*rows_per_batch"):
        list(PoolClient(address(server.uri), limited).map([big]))
    assert handler.batches == 0
    small = pa.RecordBatch.from_arrays([pa.array([7, 8], pa.int64())], names=["x"])
    got = list(PoolClient(address(server.uri), limited).map([small]))
    assert got[0].column(0).to_pylist() == [7, 8]


# -- headers, methods, tokens ----------------------------------------------------------------
class _Trap:
    """Unpickling it writes a file: proof that a header was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_header_of_a_kind_not_served_is_never_unpickled(servers, tmp_path):
    trap = tmp_path / "unpickled"
    blob = pickle.dumps(_Trap(str(trap)))
    manager = FlightService(None, token=TOKEN)
    actor, _ = servers(stream_kinds=("echo",))
    try:
        for server, kind in ((manager, "infer"), (actor, "other")):
            client, writer, reader = exchange(server, encode_header(kind, blob))
            with pytest.raises(flight.FlightServerError, match="serves no"):
                writer.begin(xs(1)[0].schema)
                writer.write_batch(xs(1)[0])
                reader.read_all()
            client.close()
        assert not trap.exists()
    finally:
        manager.shutdown()


def test_clients_get_no_traceback_and_no_server_path(servers):
    server, _ = servers()
    client = flight.FlightClient(server.uri)
    options = call_options(address(server.uri))
    descriptor = flight.FlightDescriptor.for_command(b"x")
    calls = {
        "DoGet": lambda: client.do_get(flight.Ticket(b"x"), options).read_all(),
        "DoPut": lambda: client.do_put(descriptor, xs(1)[0].schema, options)[0].close(),
        "ListFlights": lambda: list(client.list_flights(b"", options)),
        "GetFlightInfo": lambda: client.get_flight_info(descriptor, options),
        "a bad header": lambda: exchange(server, b"\xff not json")[2].read_all(),
        "an unknown action": lambda: list(client.do_action(flight.Action("x", b""), options)),
    }
    for name, call in calls.items():
        with pytest.raises(flight.FlightError) as caught:
            call()
        text = str(caught.value)
        assert "Traceback" not in text and SERVER_SOURCE not in text, (name, text)
    # pyarrow sends the traceback of any error GetSchema raises: it answers nothing
    assert client.get_schema(descriptor, options).schema == pa.schema([])


def test_an_adopted_server_keeps_only_its_last_two_managers_tokens(servers):
    server, _ = servers()
    for token in ("second-manager", "third-manager"):
        server.accept_token(token)
    assert not _pings_with(server, TOKEN)
    assert _pings_with(server, "second-manager") and _pings_with(server, "third-manager")


def _pings_with(server, token: str) -> bool:
    try:
        return action(address(server.uri, token), server.uri, "ping") == b"ok"
    except Exception:  # noqa: BLE001 - refused
        return False


# -- ports ------------------------------------------------------------------------------------
def test_servers_listen_in_flight_port_range_and_a_full_range_fails_naming_it(servers):
    first = free_port_pair()
    one, _ = servers(port_range=(first, first + 1))
    two, _ = servers(port_range=(first, first + 1))
    assert {one.gate.port, two.gate.port} == {first, first + 1}
    assert one.uri.endswith(f":{one.gate.port}") and answers_ok(two)
    with pytest.raises(PortRangeExhausted, match=f"flight_port_range {first}-{first + 1}"):
        FlightService(None, token=TOKEN, port_range=(first, first + 1))


def test_flight_port_range_is_parsed_and_checked():
    assert parse_port_range("40000-40099") == (40000, 40099)
    assert parse_port_range([40000, 40000]) == (40000, 40000)
    assert parse_port_range(None) is None
    for bad in ("40099-40000", "0-10", "a-b", (1, 2, 3), "70000"):
        with pytest.raises(ValueError, match="flight_port_range"):
            parse_port_range(bad)


# -- leases ----------------------------------------------------------------------------------
def test_a_lease_must_have_a_finite_bounded_ttl_and_a_short_id():
    book = LeaseBook()
    for ttl in (math.nan, math.inf, -1, 0, "30", True, None, 10 ** 9):
        with pytest.raises(LeaseRefused, match="ttl_s"):
            book.hold("task-a", ttl)
    for lease_id in ("", "x" * 201, 7, None):
        with pytest.raises(LeaseRefused, match="lease id"):
            book.hold(lease_id, 30)
    assert book.active() == 0


def test_the_lease_table_is_bounded_and_expires_without_scanning():
    now = [0.0]
    book = LeaseBook(clock=lambda: now[0], max_leases=20_000)
    for n in range(20_000):
        book.hold(f"task-{n}", 10 + n % 7)
    with pytest.raises(LeaseRefused, match="MAX_LEASES"):
        book.hold("one-too-many", 30)
    assert book.hold("task-0", 100) is False  # a renewal is not a new lease
    now[0] = 16.5  # every lease but the renewed one expired
    assert book.active() == 1 and book.last_end == 16.0
    assert book.hold("one-too-many", 30) is True


# -- the manager's probe ----------------------------------------------------------------------
def test_a_server_that_does_not_answer_is_silent_and_a_busy_one_is_not(servers):
    answering, _ = servers()
    busy, _ = servers(max_calls=1)
    held = exchange(busy, encode_header("echo"))
    until(lambda: busy._gatekeeper.running == 1, what="the busy server's one call")
    gone, _ = servers()
    gone_uri = gone.uri
    gone.shutdown()
    silent = silent_servers(address(answering.uri), [answering.uri, busy.uri, gone_uri],
                            timeout_s=3)
    assert list(silent) == [gone_uri]
    held[1].done_writing()
    held[0].close()


# -- a host that falls silent ------------------------------------------------------------------
def test_a_stream_whose_actor_falls_silent_is_given_up_and_its_batches_resent(servers):
    """SIGSTOP freezes an actor's process: TCP stays open and says nothing, as when its
    host or link goes down. The client gives its stream up after STALL_S with no
    heartbeat and resends its batches to the live actor: every row once, in order."""
    from hybrid_infer.transport.client import STALL_S

    live, handler = servers(0.02)
    manager = FlightService(None, token=TOKEN, actions={
        "endpoints": lambda body: json.dumps({"actors": [live.uri]}).encode()})
    frozen = subprocess.Popen([sys.executable, os.path.join(SERVER_SOURCE, "flight_servers.py"), TOKEN,
                               "0.05"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": SERVER_SOURCE})
    try:
        frozen_uri = frozen.stdout.readline().strip()
        pool = PoolAddress("pool-test", manager.uri, (frozen_uri, live.uri), TOKEN)
        client = PoolClient(pool, encode_header("echo"), max_in_flight=2)
        out, stalled_at = [], None
        for n, result in enumerate(client.map(xs(60))):
            out.append(result)
            if n == 10:
                frozen.send_signal(subprocess.signal.SIGSTOP)
                stalled_at = time.monotonic()
        recovered_s = time.monotonic() - stalled_at
        got = pa.Table.from_batches(out)
        assert got.column("x").to_pylist() == list(range(180))  # each row once, in order
        assert client.resent >= 1 and handler.batches >= 40
        assert STALL_S <= recovered_s < STALL_S + 30
        print(f"FIGURES {{'silent_actor_recovered_s': {recovered_s:.1f}}}")
    finally:
        frozen.kill()
        frozen.wait()
        manager.shutdown()
