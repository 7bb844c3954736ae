"""The Arrow Flight service a pool process runs (each actor, and the pool's manager).

`FlightService` serves on `host` (the process's Ray node address: 127.0.0.1 for an
embedded runtime), on a port the OS picks or one of `port_range`, with TLS when a
certificate is configured, and refuses every call that does not carry the pool's token
(or, on an actor a new manager adopted, its previous manager's token too).

The Flight server itself listens on loopback; other hosts reach it through a
`ConnectionGate` (gate.py) that bounds connections and closes idle ones, because
pyarrow exposes none of gRPC's own settings for that.

DoExchange: the client sends a header (what it wants served, the job's max_row_bytes
and options, once per stream) and then request batches; the service runs
`handler(kind, options)`'s function on each batch in a thread pool (several batches of
one stream may be in flight, at most `max_in_flight_per_stream`: past that it stops
reading the stream until an answer is sent) and streams the results back in request
order, with a heartbeat every HEARTBEAT_S while the stream waits for one (so that a
client tells a slow batch from a lost link). A failure of the served code ends the stream with its type and message
(protocol.app_error_info), which the client raises again; anything else is a transport
failure, which the client answers by resending the batch elsewhere.

Facing a network, every request is that request's problem, never the process's:
- a header is parsed (and its options unpickled) only for a kind the server serves;
- each request batch is validated in full (offsets, lengths, UTF-8) before any code
  reads it, and refused when larger than its rows x the job's max_row_bytes;
- at most `max_calls` calls run at once (each holds a gRPC thread);
- a client only ever gets "Type: message", never a traceback with the server's paths.

Actions: "ping", plus what the owner adds (the manager adds "endpoints" and "lease").
"""

from __future__ import annotations

import hmac
import logging
import queue
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable

import pyarrow as pa
import pyarrow.flight as flight

from hybrid_infer.errors import PoolRequestError
from hybrid_infer.transport.busy import BusyTime
from hybrid_infer.transport.gate import IDLE_TIMEOUT_S, MAX_CONNECTIONS, ConnectionGate
from hybrid_infer.transport.protocol import (AUTH_HEADER, HEARTBEAT, MAX_MESSAGE_BYTES,
                                             app_error_info, bearer, decode_header,
                                             loads_options)

log = logging.getLogger(__name__)

#: handler(kind, options) -> the function serving one request batch of that stream
Handler = Callable[[str, object], Callable]

#: Calls (streams, actions) one server runs at once; each holds a gRPC thread.
MAX_CALLS = 256
#: Request batches of one stream a server holds at once (read, not answered yet): the
#: client's own window (ClientSettings.max_in_flight, default 2) stays well below.
MAX_IN_FLIGHT_PER_STREAM = 16
#: Tokens a server accepts: its manager's and the one before (jobs still streaming
#: after a new manager adopted this actor); older ones are forgotten.
KEPT_TOKENS = 2
#: While it holds a stream's batch, a server sends that stream a heartbeat this often:
#: a client that hears nothing for longer knows the link or host is gone.
HEARTBEAT_S = 1.0
#: Besides its rows' bytes, a request batch may carry this much (offsets, identity).
BATCH_OVERHEAD_BYTES = 1 << 20


class _Gatekeeper(flight.ServerMiddlewareFactory):
    """Admits a call that carries an accepted token while fewer than `max_calls` run.

    Tokens: one, or two after a new pool manager adopted this server (its jobs in
    flight keep the old token; see PoolActor.serve)."""

    def __init__(self, token: str, max_calls: int):
        super().__init__()
        self._expected = (bearer(token),)
        self._max_calls = max_calls
        self._lock = threading.Lock()
        self.running = 0
        self.refused = 0

    def accept(self, token: str) -> None:
        if bearer(token) not in self._expected:  # one swap: no lock needed
            self._expected = (self._expected + (bearer(token),))[-KEPT_TOKENS:]

    def start_call(self, info, headers):
        values = headers.get(AUTH_HEADER) or []
        given = values[0] if values else b""
        if isinstance(given, str):
            given = given.encode()
        # every comparison runs (constant time whichever token matches)
        if not sum(hmac.compare_digest(given, expected) for expected in self._expected):
            raise flight.FlightUnauthenticatedError(
                "hybrid_infer pool: missing or wrong access token (use the PoolAddress the "
                "driver got from this pool)")
        with self._lock:
            if self.running >= self._max_calls:
                self.refused += 1
                raise flight.FlightUnavailableError(
                    f"hybrid_infer pool: this server already runs {self.running} calls "
                    f"(MAX_CALLS in hybrid_infer/transport/server.py); try another actor, or "
                    "start the pool with more actors")
            self.running += 1
        return _CallEnd(self)

    def ended(self) -> None:
        with self._lock:
            self.running -= 1


class _CallEnd(flight.ServerMiddleware):
    def __init__(self, gatekeeper: _Gatekeeper):
        self._gatekeeper = gatekeeper

    def call_completed(self, exception):
        self._gatekeeper.ended()


def read_tls_pair(cert_path: str | None, key_path: str | None) -> list | None:
    if not cert_path:
        return None
    with open(cert_path, "rb") as cert, open(key_path, "rb") as key:
        return [flight.CertKeyPair(cert.read(), key.read())]


def check_request(batch: pa.RecordBatch, max_row_bytes: int | None) -> None:
    """Raise PoolRequestError unless `batch` is well formed and within its size bound."""
    size = batch.get_total_buffer_size()
    limit = MAX_MESSAGE_BYTES if max_row_bytes is None else min(
        MAX_MESSAGE_BYTES, max(1, batch.num_rows) * max_row_bytes + BATCH_OVERHEAD_BYTES)
    if size > limit:
        raise PoolRequestError(
            f"a request batch of {batch.num_rows} rows holds {size} bytes, over "
            f"{limit} bytes (its rows x max_row_bytes={max_row_bytes}): send smaller "
            "batches (rows_per_batch) or raise max_row_bytes")
    try:
        batch.validate(full=True)
    except (pa.ArrowException, ValueError) as exc:
        raise PoolRequestError(
            f"a malformed Arrow request batch was refused: {exc}. It was damaged on the way "
            "or not written by hybrid_infer's client: send batches through PoolClient "
            "(hybrid_infer.transport.client)") from None


class FlightService(flight.FlightServerBase):
    def __init__(self, handler: Handler | None, *, token: str, host: str = "127.0.0.1",
                 port_range: tuple[int, int] | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None,
                 actions: dict[str, Callable[[bytes], bytes]] | None = None,
                 stream_kinds: tuple[str, ...] | None = None, max_workers: int = 64,
                 max_calls: int = MAX_CALLS,
                 max_in_flight_per_stream: int = MAX_IN_FLIGHT_PER_STREAM,
                 max_connections: int = MAX_CONNECTIONS,
                 idle_timeout_s: float = IDLE_TIMEOUT_S):
        """`stream_kinds`: the header kinds `handler` serves (None: any it accepts); a
        stream of another kind is refused before its options are unpickled."""
        scheme = "grpc+tls" if tls_cert else "grpc+tcp"
        self._gatekeeper = _Gatekeeper(token, max_calls)
        super().__init__(f"{scheme}://127.0.0.1:0",
                         tls_certificates=read_tls_pair(tls_cert, tls_key),
                         middleware={"gate": self._gatekeeper})
        self._handler = handler
        self._stream_kinds = stream_kinds
        self._actions = {"ping": lambda body: b"ok", **(actions or {})}
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="flight-infer")
        self._max_in_flight = max_in_flight_per_stream
        self._held_lock = threading.Lock()
        # request batches received and not answered yet (all streams), and how long any
        # was: the pool's utilisation signal (transport/busy.py)
        self.busy = BusyTime()
        self._computing: Counter = Counter()  # the gate's port towards us -> batches
        try:
            self.gate = ConnectionGate(host, ("127.0.0.1", self.port), port_range=port_range,
                                       max_connections=max_connections,
                                       idle_timeout_s=idle_timeout_s, busy=self._busy)
        except BaseException:
            self.shutdown()
            raise
        self.uri = f"{scheme}://{host}:{self.gate.port}"

    def accept_token(self, token: str) -> None:
        """Also accept `token` from now on; the token accepted last before stays valid."""
        self._gatekeeper.accept(token)

    def _busy(self, gate_port: int) -> bool:
        return self._computing[gate_port] > 0

    # -- DoExchange: request batches in, result batches out, in order -------------------
    def do_exchange(self, context, descriptor, reader, writer):
        try:
            header = decode_header(descriptor.command)
            if self._handler is None:
                raise PoolRequestError(
                    f"this server serves no {header.kind!r} streams (a pool's manager "
                    "serves none): send them to the pool's actors (PoolAddress.actors)")
            if self._stream_kinds is not None and header.kind not in self._stream_kinds:
                raise PoolRequestError(
                    f"this server serves no {header.kind!r} streams, only "
                    f"{', '.join(map(repr, self._stream_kinds))}: open the stream with one "
                    "of these (protocol.encode_header)")
            serve = self._handler(header.kind, loads_options(header.options_blob))
        except Exception as exc:
            raise _app_error(exc) from None
        peer_port = _peer_port(context.peer())
        answers: queue.Queue = queue.Queue()
        room = threading.Semaphore(self._max_in_flight)  # released as answers go out
        # The handler's thread reads requests; a writer thread answers them in order as
        # they finish. Both end here, before the handler returns (the reader and writer
        # die with the call).
        writing = threading.Thread(target=self._answer, args=(answers, writer, room),
                                   daemon=True, name="flight-answer")
        writing.start()
        try:
            while True:
                room.acquire()
                chunk = reader.read_chunk()
                if chunk.data is None:  # metadata only: nothing to serve
                    room.release()
                    continue
                try:
                    check_request(chunk.data, header.max_row_bytes)
                except PoolRequestError as exc:
                    answers.put(_failed(exc))
                    break  # the error ends the stream
                # counted as computing from its arrival: the gate's idle reaper must not
                # close the connection while the batch waits for an executor thread
                self._hold(peer_port)
                try:
                    answers.put(self._executor.submit(self._held, serve, chunk.data, peer_port))
                except BaseException:
                    self._release(peer_port)
                    raise
        except StopIteration:
            pass
        except pa.ArrowInvalid as exc:  # unreadable IPC: the request's error
            answers.put(_failed(PoolRequestError(
                f"an unreadable request was refused: {exc}. Send Arrow record batches "
                "through PoolClient (hybrid_infer.transport.client)")))
        except Exception as exc:  # the client went away: nothing left to answer
            log.debug("stream from %s ended: %s", context.peer(), exc)
        finally:
            answers.put(None)
            writing.join()

    def _hold(self, peer_port) -> None:
        with self._held_lock:
            self._computing[peer_port] += 1

    def _release(self, peer_port) -> None:
        with self._held_lock:
            self._computing[peer_port] -= 1
            if not self._computing[peer_port]:
                del self._computing[peer_port]

    def _held(self, serve, batch, peer_port):
        """Serve one batch counted by _hold at its arrival; the count ends with it."""
        self.busy.enter()
        try:
            return serve(batch)
        finally:
            self.busy.leave()
            self._release(peer_port)

    @property
    def held(self) -> int:
        """Request batches received and not answered yet, all streams."""
        return self.busy.held

    @property
    def held_peak(self) -> int:
        return self.busy.held_peak

    @staticmethod
    def _answer(answers: queue.Queue, writer, room: threading.Semaphore) -> None:
        """Write each answer in request order; a failure of the served code is sent as
        metadata (the client raises it and ends the stream); a heartbeat goes out every
        HEARTBEAT_S while an answer is awaited; after a failed write, the remaining
        answers are only waited for."""
        begun = broken = False
        while (answer := answers.get()) is not None:
            while not wait([answer], timeout=HEARTBEAT_S).done and not broken:
                try:
                    writer.write_metadata(HEARTBEAT)
                except Exception as exc:
                    log.debug("could not send a heartbeat: %s", exc)
                    broken = True
            try:
                result = answer.result()
            except Exception as exc:
                result = exc
            try:
                if broken:
                    continue
                if isinstance(result, BaseException):
                    writer.write_metadata(app_error_info(result))
                    broken = True
                    continue
                if not begun:
                    writer.begin(result.schema)
                    begun = True
                writer.write_batch(result)
            except Exception as exc:
                log.debug("could not answer: %s", exc)
                broken = True
            finally:
                room.release()

    # -- actions ---------------------------------------------------------------------------
    def do_action(self, context, action):
        run = self._actions.get(action.type)
        if run is None:
            raise flight.FlightServerError(f"unknown action {action.type!r}")
        body = action.body.to_pybytes() if action.body is not None else b""
        try:
            result = run(body)
        except Exception as exc:
            raise _app_error(exc) from None
        yield flight.Result(result)

    def list_actions(self, context):
        return [(name, "") for name in self._actions]

    # -- what a pool never serves: a plain refusal (pyarrow's default sends a traceback)
    def _not_served(self, method: str):
        raise flight.FlightServerError(f"a hybrid_infer pool serves no {method}: only "
                                       "DoExchange and DoAction")

    def do_get(self, context, ticket):
        self._not_served("DoGet")

    def do_put(self, context, descriptor, reader, writer):
        self._not_served("DoPut")

    def list_flights(self, context, criteria):
        self._not_served("ListFlights")

    def get_flight_info(self, context, descriptor):
        self._not_served("GetFlightInfo")

    def get_schema(self, context, descriptor):
        # pyarrow (19) sends the traceback of any error raised here: answer nothing
        return flight.SchemaResult(pa.schema([]))

    def stop(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        gate = getattr(self, "gate", None)
        if gate is not None:
            gate.close()
        super().shutdown()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _peer_port(peer: str | bytes) -> int | None:
    """The port of a gRPC peer string ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000")."""
    if isinstance(peer, bytes):
        peer = peer.decode(errors="replace")
    tail = peer.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _failed(exc: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(exc)
    return future


def _app_error(exc: BaseException) -> flight.FlightServerError:
    return flight.FlightServerError(f"{type(exc).__name__}: {exc}",
                                    extra_info=app_error_info(exc))
