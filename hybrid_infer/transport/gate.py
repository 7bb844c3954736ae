"""The public TCP port of a pool's Flight server: a gate that bounds and times out.

pyarrow's Flight server exposes none of gRPC's connection settings (max connections,
idle timeouts), and gRPC's accept loop can stop for good once the process ran out of
file descriptors (issue 18: pings still failed 93 s after the attacker left). So the
Flight server listens on loopback only, and this gate owns the address other hosts
reach. It forwards bytes both ways (TLS passes through untouched: the Flight server
still terminates it) and:

- accepts at most `max_connections` at once, and never so many that the process could
  run out of file descriptors (each connection costs three: the client's, the gate's
  towards the server, the server's); one more is closed at once and logged;
- closes a connection after `idle_timeout_s` with no byte either way, unless the
  Flight server is still computing a batch it sent (`busy(port)`, where `port` is the
  gate's own port towards the server: the peer the server sees);
- keeps accepting after running out of file descriptors (asyncio's accept loop pauses
  and retries);
- binds a port from `port_range` when one is given (a firewall opens only that range),
  failing with PortRangeExhausted when every port in it is taken.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
import threading
import time
from typing import Callable

from hybrid_infer.errors import ConfigurationError

log = logging.getLogger(__name__)

#: Connections one server accepts at once: a Spark task opens one per actor it uses
#: (and a short one per lease renewal), so a cluster of N task slots needs about N.
MAX_CONNECTIONS = 1024
#: A connection with no byte either way for this long is closed, unless its server is
#: computing one of its batches (a legitimate client waits silently only then).
IDLE_TIMEOUT_S = 300.0
_CHUNK = 1 << 20
#: File descriptors the gate leaves to the rest of the process (model files, Ray, gRPC).
FD_RESERVE = 128
#: File descriptors one forwarded connection costs in this process.
FDS_PER_CONNECTION = 3
#: Connections accepted in one go before any is closed (asyncio's accept loop takes up
#: to its `backlog` at once): they hold descriptors too.
ACCEPT_BURST = 16


def connection_budget(max_connections: int) -> int:
    """`max_connections`, lowered so that they fit this process's file descriptors."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    fitting = max(1, (soft - min(FD_RESERVE, soft // 2) - ACCEPT_BURST) // FDS_PER_CONNECTION)
    if fitting < max_connections:
        log.info("flight gate: at most %d connections (RLIMIT_NOFILE %d), not %d",
                 fitting, soft, max_connections)
    return min(max_connections, fitting)


class PortRangeExhausted(ConfigurationError):
    """Every port of flight_port_range is taken on this host."""


def parse_port_range(value) -> tuple[int, int] | None:
    """(first, last) from "40000-40099", [40000, 40099] or (40000, 40099); None stays
    None. A ConfigurationError says what is wrong otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        first, sep, last = value.partition("-")
        value = (first.strip(), last.strip()) if sep else (value, value)
    try:
        first, last = (int(part) for part in value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"flight_port_range must be two port numbers, like \"40000-40099\" or "
            f"(40000, 40099), got {value!r}") from None
    if not 1 <= first <= last <= 65535:
        raise ConfigurationError(
            f"flight_port_range must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535, got "
            f"{first}-{last}")
    return first, last


def bind_listener(host: str, port_range: tuple[int, int] | None) -> socket.socket:
    """A listening socket on `host`: any free port, or the first free one of the range
    (tried in a random order, so servers starting together rarely collide)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports = [0] if port_range is None else list(range(port_range[0], port_range[1] + 1))
    random.shuffle(ports)
    for port in ports:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(512)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            if port_range is None or exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
    raise PortRangeExhausted(
        f"every port of flight_port_range {port_range[0]}-{port_range[1]} is taken on "
        f"{host}: each pool server (the manager, and each actor on this host) needs one. "
        "Widen flight_port_range (and the firewall rule that opens it), or stop what "
        "holds those ports")


class ConnectionGate:
    """Forwards `host:port` (picked at construction) to `backend` on loopback."""

    def __init__(self, host: str, backend: tuple[str, int], *,
                 port_range: tuple[int, int] | None = None,
                 max_connections: int = MAX_CONNECTIONS,
                 idle_timeout_s: float = IDLE_TIMEOUT_S,
                 busy: Callable[[int], bool] = lambda port: False):
        self._listener = bind_listener(host, port_range)
        self.port = self._listener.getsockname()[1]
        self._backend = backend
        self._max_connections = connection_budget(max_connections)
        self._idle_timeout_s = idle_timeout_s
        self._busy = busy
        #: task -> [time of its last byte, its port towards the backend (None: connecting)]
        self._connections: dict[object, list] = {}
        self.refused = 0  # connections closed at once: max_connections reached
        self.timed_out = 0  # connections closed for idleness
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                        name=f"flight-gate-{self.port}")
        self._thread.start()
        started.wait()

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(
            self._serve, sock=self._listener, limit=_CHUNK, backlog=ACCEPT_BURST))
        self._reaper = self._loop.create_task(self._reap_idle())
        started.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        if len(self._connections) >= self._max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                log.warning("flight gate %d: %d connection(s) refused: already %d open "
                            "(MAX_CONNECTIONS)", self.port, self.refused, len(self._connections))
            writer.transport.abort()
            return
        state = self._connections[task] = [time.monotonic(), None]
        backend_writer = None
        try:
            backend_reader, backend_writer = await asyncio.open_connection(
                *self._backend, limit=_CHUNK)
            state[1] = backend_writer.get_extra_info("sockname")[1]
            for end in (writer, backend_writer):  # gRPC's small frames: no Nagle delay
                end.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                        socket.TCP_NODELAY, 1)
            await asyncio.gather(self._pipe(reader, backend_writer, state),
                                 self._pipe(backend_reader, writer, state))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._connections.pop(task, None)
            for end in (writer, backend_writer):
                if end is not None:
                    end.transport.abort()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, state: list):
        try:
            while chunk := await source.read(_CHUNK):
                state[0] = time.monotonic()
                sink.write(chunk)
                await sink.drain()
        finally:  # one side ended: end both (gRPC never half-closes)
            sink.transport.abort()

    async def _reap_idle(self) -> None:
        period = max(0.05, min(5.0, self._idle_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for task, (last, backend_port) in list(self._connections.items()):
                if backend_port is None:
                    continue  # still connecting to the backend
                if now - last > self._idle_timeout_s and not self._busy(backend_port):
                    self.timed_out += 1
                    log.info("flight gate %d: closing a connection idle for %.0f s "
                             "(IDLE_TIMEOUT_S)", self.port, now - last)
                    task.cancel()

    def close(self) -> None:
        def stop():
            self._server.close()
            self._reaper.cancel()  # not left pending when the loop stops
            for task in list(self._connections):
                task.cancel()
            self._loop.call_later(0.1, self._loop.stop)

        if self._loop.is_running():
            self._loop.call_soon_threadsafe(stop)
            self._thread.join(timeout=5)
