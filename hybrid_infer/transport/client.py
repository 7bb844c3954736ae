"""PoolClient: the one loop that streams a Spark task's batches through a pool.

Used by the hybrid mode (mapInArrow), the raydp mode (Ray Data tasks) and
predict_batch_udf (pandas UDF). It needs no Ray: only the PoolAddress the driver got
from the pool.

- One DoExchange stream per actor, opened when first used; the job's options travel
  once, in the stream's header.
- Least-loaded: each batch goes to the live actor with the fewest of this client's
  batches in flight; at most `max_in_flight` batches per actor are in flight (memory
  stays bounded whatever the data size).
- Results come back in input order, whatever actor answered.
- When an actor's stream breaks (the actor died, its node went away), its unanswered
  batches are resent at once to live actors (and so is a batch whose write found the
  stream broken; `resent` counts both), and the pool's manager is asked in the
  background for a fresh endpoint list (it replaces dead actors first); with no live
  actor left the client waits for that list.
- An address that does not answer fails within `connect_timeout_s`, naming it.
- A stream that goes silent while an actor holds its batches (the actor's host or
  link went down: TCP says nothing for minutes) is given up after `STALL_S` without
  a byte (servers send a heartbeat every second while they hold a batch), and its
  batches are resent like a dead actor's.
- While it maps, the client holds a lease on the pool (transport/lease.py), so the
  manager does not scale the pool down under a running job. Each lease renewal
  brings the pool's actor list: actors it grew get batches from then on, and retired
  ones none. A pool found with no live
  actors (scaled to zero while idle, or before this plan ran) is scaled back up by the
  manager when the client asks it for endpoints.
- A dead manager fails nothing while live actors remain (the client talks to them
  directly). With no live actor and no manager, an actor given up because it missed
  the first ping of a stream is pinged once more: on a loaded host an actor can miss
  one ping while it serves other tasks, and with the manager's host down it is all that
  is left (one that fell silent holding batches is not: its link is down). When none
  answers, the job fails with a PoolError within about `connect_timeout_s`.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.flight as flight

from hybrid_infer.errors import PoolError, PoolTimeoutError
from hybrid_infer.transport.gate import IDLE_TIMEOUT_S, MAX_CONNECTIONS
from hybrid_infer.transport.lease import LeaseKeeper
from hybrid_infer.transport.protocol import (AUTH_HEADER, HEARTBEAT, PoolAddress, bearer,
                                             rebuild_app_error)

log = logging.getLogger(__name__)

_END = object()
#: A stream holding batches that hears nothing for this long counts as lost (servers
#: send a heartbeat every second; 4 s, then connect_timeout_s (4 s) asking the
#: manager, lets a job with no live actor fail within 10 s of losing its last link).
STALL_S = 4.0
#: How long a pool server may take to answer a first ping before it counts as gone.
CONNECT_TIMEOUT_S = 4.0


class StreamStalled(ConnectionError):
    """A stream's actor fell silent (no heartbeat) while holding its batches."""


@dataclass(eq=False)
class _Item:
    batch: pa.RecordBatch
    stream: "_Stream | None" = None
    result: pa.RecordBatch | None = None
    attempts: int = 0


def connect(uri: str, address: PoolAddress) -> flight.FlightClient:
    return flight.FlightClient(uri, tls_root_certs=address.tls_root_cert)


def call_options(address: PoolAddress, timeout_s: float | None = None):
    return flight.FlightCallOptions(timeout=timeout_s,
                                    headers=[(AUTH_HEADER.encode(), bearer(address.token))])


def action(address: PoolAddress, uri: str, name: str, body: bytes = b"", *,
           timeout_s: float | None = None, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> bytes:
    """One action on one server; fails within connect_timeout_s if it does not answer."""
    client = connect(uri, address)
    try:
        if name != "ping":
            _ping(client, uri, address, connect_timeout_s)
        try:
            results = list(client.do_action(flight.Action(name, body),
                                            call_options(address, timeout_s)))
        except flight.FlightError as exc:
            raise _raised(exc, uri) from None
        return results[0].body.to_pybytes() if results else b""
    finally:
        client.close()


def _ping(client, uri: str, address: PoolAddress, timeout_s: float) -> None:
    try:
        list(client.do_action(flight.Action("ping", b""), call_options(address, timeout_s)))
    except flight.FlightUnauthenticatedError as exc:
        raise PoolError(f"the pool at {uri} refused this client's token: {exc}") from None
    except (flight.FlightError, OSError) as exc:
        raise _connection_failed(exc, uri, timeout_s) from None


class _Unreachable(ConnectionError):
    pass


def _connection_failed(exc: Exception, uri: str, timeout_s: float | None) -> _Unreachable:
    """Why a pool server could not be used, naming its address: a server that refused or
    closed the connection (its gate: gate.py) is told from one that never answered."""
    reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:1000]}"
    if isinstance(exc, flight.FlightUnavailableError):
        return _Unreachable(
            f"the pool server at {uri} refused or closed the connection ({reason}): it "
            f"may hold as many connections as it takes (MAX_CONNECTIONS, {MAX_CONNECTIONS} "
            f"by default) or have closed this one as idle (after {IDLE_TIMEOUT_S:g} s), "
            "nothing may listen at that address any more, or it serves TLS with a "
            "certificate this client does not trust; retry, or check the pool with "
            "`hybrid-infer pool status`")
    waited = f" within {timeout_s:g} s" if timeout_s is not None else ""
    return _Unreachable(f"nothing answers at {uri}{waited} ({reason})")


def _raised(exc: flight.FlightError, uri: str) -> Exception:
    app = rebuild_app_error(getattr(exc, "extra_info", None))
    if app is not None:
        return app
    if isinstance(exc, flight.FlightUnauthenticatedError):
        return PoolError(f"the pool at {uri} refused this client's token: {exc}")
    if isinstance(exc, flight.FlightUnavailableError):
        return _connection_failed(exc, uri, None)
    return exc


def _raise_app_error(exc) -> None:
    """Raise the served code's own error again (not a transport failure: no resend)."""
    app = rebuild_app_error(getattr(exc, "extra_info", None))
    if app is not None:
        raise app


class _Stream:
    """One DoExchange with one actor; a thread reads its answers into a queue."""

    def __init__(self, uri: str, address: PoolAddress, header: bytes, connect_timeout_s: float):
        self.uri = uri
        self.client = connect(uri, address)
        _ping(self.client, uri, address, connect_timeout_s)
        self.writer, self.reader = self.client.do_exchange(
            flight.FlightDescriptor.for_command(header), call_options(address))
        self.pending: deque[_Item] = deque()  # sent, not answered yet, in send order
        self.answers: queue.Queue = queue.Queue()
        self._begun = False
        self._reading = threading.Thread(target=self._read, daemon=True, name="flight-answers")
        self._reading.start()
        self.heard = time.monotonic()  # the last byte from the actor, or the last send
        self._writing = False
        self._finished = threading.Event()
        self._cancelled = False  # by _watch: no write may follow (gRPC aborts)
        self._ending = threading.Lock()  # cancel and finish never overlap
        threading.Thread(target=self._watch, daemon=True, name="flight-watch").start()

    def send(self, item: _Item) -> None:
        if not self._begun:
            self.writer.begin(item.batch.schema)
            self._begun = True
        self._writing = True
        try:
            self.writer.write_batch(item.batch)
        finally:
            self._writing = False
            self.heard = time.monotonic()
        item.stream = self
        self.pending.append(item)

    def in_flight(self) -> int:
        """Batches the actor holds: sent and not answered (answers read count as done)."""
        return len(self.pending) - self.answers.qsize()

    def _read(self) -> None:
        try:
            while True:
                chunk = self.reader.read_chunk()
                self.heard = time.monotonic()
                metadata = (chunk.app_metadata.to_pybytes()
                            if chunk.app_metadata is not None else None)
                if chunk.data is None and metadata == HEARTBEAT:
                    continue
                if chunk.data is None:  # the served code failed: its error, as metadata
                    app = rebuild_app_error(metadata)
                    self.answers.put(app or RuntimeError("empty answer from the pool"))
                    return
                self.answers.put(chunk.data)
        except StopIteration:
            self.answers.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the task's thread
            self.answers.put(exc)

    def _watch(self) -> None:
        """Give the stream up when the actor holds batches (or a write is stuck) and
        nothing came for STALL_S: cancelling the call unblocks a stuck write."""
        while not self._finished.wait(1.0):
            holding = len(self.pending) - self.answers.qsize() > 0 or self._writing
            silent_s = time.monotonic() - self.heard
            if holding and silent_s > STALL_S:
                with self._ending:
                    if self._finished.is_set():
                        return
                    self._cancelled = True
                    try:
                        self.reader.cancel()
                    except Exception:  # noqa: BLE001 - already over
                        pass
                self.answers.put(StreamStalled(
                    f"{self.uri} sent nothing for {silent_s:.0f} s while holding this "
                    "task's batches (its host or the link to it may be down)"))
                return

    def finish(self) -> bool:
        """Tell the actor this stream is done and release it; True when the actor ended
        the stream, False when it had to be cancelled.

        The reader thread must end before the call's objects are closed; if the actor
        does not end the stream within a few seconds, the call is cancelled and left to
        the garbage collector (the thread holds it).
        """
        with self._ending:
            self._finished.set()
        try:
            if not self._cancelled:  # a stream that carried no batch ends here too: the
                self.writer.done_writing()  # actor would wait for its first message
        except Exception:  # the actor may be gone already
            pass
        self._reading.join(timeout=5)
        if self._cancelled:
            return False  # a cancelled call is left to the garbage collector, like below
        if self._reading.is_alive():
            try:
                self.reader.cancel()
            except Exception:
                pass
            return False
        try:
            self.writer.close()
        except Exception:
            pass
        self.client.close()
        return True


class PoolClient:
    """Streams batches through a pool. `header`: protocol.encode_header(kind, options)."""

    def __init__(self, address: PoolAddress, header: bytes, *, max_in_flight: int = 2,
                 timeout_s: float = 600.0, max_attempts: int = 4,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self._address = address
        self._header = header
        self._max_in_flight = max_in_flight
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._connect_timeout_s = connect_timeout_s
        self._endpoints: list[str] = list(address.actors)
        self._streams: dict[str, _Stream] = {}
        self._dead: set[str] = set()
        self._missed_ping: set[str] = set()  # given up after a ping got no answer (_revive)
        self._refresher = ThreadPoolExecutor(1, thread_name_prefix="pool-refresh")
        self._refreshing: Future | None = None
        self._lease = LeaseKeeper(self._lease_action, address.pool_name,
                                  on_answer=self._lease_answered)
        self._offered: list[str] | None = None  # the actors the last lease answer listed
        self.resent = 0
        self.refreshes = 0

    # -- the loop ----------------------------------------------------------------------------
    def map(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """One result batch per input batch, in input order."""
        window: deque[_Item] = deque()
        self._lease.start()  # before the first batch: a slow upstream is a running job
        try:
            for batch in batches:
                if not self._streams:
                    self._open_all()
                while len(window) >= self._max_in_flight * max(1, len(self._live())):
                    yield self._collect(window.popleft())
                item = _Item(batch)
                window.append(item)
                self._send(item)
            while window:
                yield self._collect(window.popleft())
        finally:
            self.close()

    def close(self) -> None:
        self._lease.stop()
        for stream in self._streams.values():
            stream.finish()
        self._streams.clear()
        self._refresher.shutdown(wait=False, cancel_futures=True)

    # -- sending -------------------------------------------------------------------------
    def _open_all(self) -> None:
        """Open a stream to every live actor before the first batch, so the first batches
        leave back to back (an actor gets its share together and batches it together)."""
        for uri in self._live():
            try:
                self._streams[uri] = _Stream(uri, self._address, self._header,
                                             self._connect_timeout_s)
            except PoolError:
                raise
            except (_Unreachable, flight.FlightError, pa.ArrowException, OSError) as exc:
                self._lose(uri, exc)

    def _live(self) -> list[str]:
        return [uri for uri in self._endpoints if uri not in self._dead]

    def _send(self, item: _Item) -> None:
        item.attempts += 1
        if item.attempts > self._max_attempts:
            raise PoolError(f"a batch failed on {item.attempts - 1} actors in a row; the pool "
                            f"{self._address.pool_name!r} keeps losing actors")
        while True:
            self._take_refreshed()
            live = self._live()
            if not live:
                self._refresh_now()
                continue
            loads = {uri: self._streams[uri].in_flight() if uri in self._streams else 0
                     for uri in live}
            lowest = min(loads.values())
            uri = random.choice([u for u in live if loads[u] == lowest])
            try:
                stream = self._streams.get(uri)
                if stream is None:
                    stream = self._streams[uri] = _Stream(uri, self._address, self._header,
                                                          self._connect_timeout_s)
                stream.send(item)
                return
            except PoolError:
                raise
            except (_Unreachable, flight.FlightError, pa.ArrowException, OSError) as exc:
                _raise_app_error(exc)
                self._lose(uri, exc)
                # This batch goes to another actor: a resend too. An actor that died
                # after answering everything it had is found here, on the next write,
                # not by its reader; which of the two sees the death first depends on
                # timing (and on pyarrow's Flight: 19 and 26 differ), so both count.
                self.resent += 1

    def _collect(self, item: _Item) -> pa.RecordBatch:
        while item.result is None:
            stream = item.stream
            try:
                answer = stream.answers.get(timeout=self._timeout_s)
            except queue.Empty:
                raise PoolTimeoutError(
                    f"a batch of {item.batch.num_rows} rows got no answer from the pool within "
                    f"{self._timeout_s} s (batch_timeout_s); raise it or check the pool "
                    "with `hybrid-infer pool status`") from None
            if isinstance(answer, pa.RecordBatch) and stream.pending:
                stream.pending.popleft().result = answer
                continue
            if isinstance(answer, Exception) and not isinstance(answer, (
                    flight.FlightError, pa.ArrowException, OSError)):
                raise answer  # the served code's own error (sent as metadata)
            _raise_app_error(answer)
            self._lose(stream.uri, answer)
        return item.result

    def _lease_action(self, body: bytes) -> bytes:
        return action(self._address, self._address.manager, "lease", body, timeout_s=30,
                      connect_timeout_s=self._connect_timeout_s)

    # -- losing actors, refreshing endpoints ------------------------------------------------
    def _lose(self, uri: str, cause) -> None:
        """Stop using `uri`; resend what it had not answered; refresh the endpoints."""
        self._dead.add(uri)
        if isinstance(cause, _Unreachable):  # its first ping: slow, or gone (_revive)
            self._missed_ping.add(uri)
        stream = self._streams.pop(uri, None)
        unanswered = list(stream.pending) if stream else []
        if stream:
            stream.pending.clear()
            stream.finish()
        reason = cause if isinstance(cause, BaseException) else "stream ended early"
        log.warning("pool %s: actor at %s lost (%s: %s); resending %d batch(es)",
                    self._address.pool_name, uri, type(reason).__name__,
                    str(reason)[:200], len(unanswered))
        if self._refreshing is None and self._live():
            self._refreshing = self._refresher.submit(self._fetch_endpoints)
        for item in unanswered:
            self.resent += 1
            self._send(item)

    def _fetch_endpoints(self) -> list[str]:
        """The pool's live actors, from its manager, after it replaced dead ones."""
        try:
            body = action(self._address, self._address.manager, "endpoints",
                          json.dumps({"heal": True}).encode(), timeout_s=None,
                          connect_timeout_s=self._connect_timeout_s)
        except (_Unreachable, flight.FlightError, OSError) as exc:  # dead, or died answering
            why = (str(exc).splitlines() or [""])[0][:300]
            raise PoolError(
                f"pool {self._address.pool_name!r} was stopped or its manager died (or "
                f"its Ray cluster went down): its actors and its manager do not answer "
                f"({type(exc).__name__}: {why}); run the job again, calling infer() again (a "
                "DataFrame built before the pool stopped keeps the old pool's address): "
                "that starts a new "
                "manager, which adopts the pool's live actors or starts new ones (or "
                "hybrid-infer pool start). If the pool runs, a firewall between this host "
                "and the pool's may drop its ports: open the pool's flight_port_range "
                "(docs/operations.md: Ports to open)") from None
        return json.loads(body)["actors"]

    def _use(self, endpoints: list[str]) -> None:
        self.refreshes += 1
        if not endpoints:
            raise PoolError(f"pool {self._address.pool_name!r} has no live actors (it was "
                            "stopped): run infer() again, or start the pool again "
                            "(hybrid-infer pool start)")
        self._endpoints = list(endpoints)
        self._dead -= set(endpoints)  # the manager just checked them: alive

    def _refresh_now(self) -> None:
        refreshing, self._refreshing = self._refreshing, None
        try:
            endpoints = refreshing.result() if refreshing is not None else self._fetch_endpoints()
        except PoolError:
            if not self._revive():
                raise
            return
        self._use(endpoints)

    def _revive(self) -> bool:
        """With no live actor and no manager: ping the actors given up after a missed
        ping once more (each once per client, together); True when one answered (it is
        used again)."""
        again = [uri for uri in self._endpoints if uri in self._dead and uri in self._missed_ping]
        if not again:
            return False
        self._missed_ping.difference_update(again)
        with ThreadPoolExecutor(len(again), thread_name_prefix="pool-ping") as pinging:
            answered = [uri for uri, ok in zip(again, pinging.map(self._answers, again)) if ok]
        if answered:
            log.warning("pool %s: its manager does not answer; %d actor(s) given up answer a "
                        "ping again and are used again: %s", self._address.pool_name,
                        len(answered), ", ".join(answered))
            self._dead -= set(answered)
        return bool(answered)

    def _answers(self, uri: str) -> bool:
        try:
            action(self._address, uri, "ping", timeout_s=self._connect_timeout_s)
            return True
        except (PoolError, _Unreachable, flight.FlightError, OSError):
            return False

    def _lease_answered(self, answer: dict) -> None:
        """(The lease thread.) Remember the pool's actor list for the sending thread."""
        if answer.get("actors"):
            self._offered = list(answer["actors"])

    def _take_refreshed(self) -> None:
        offered, self._offered = self._offered, None
        if offered is not None and set(offered) != set(self._endpoints):
            # the pool grew or retired actors: new batches go to this list; batches in
            # flight on a retired actor are still collected (or resent if it is gone)
            log.info("pool %s now lists %d actor(s) (was %d)", self._address.pool_name,
                     len(offered), len(self._endpoints))
            self._endpoints = offered
        if self._refreshing is None or not self._refreshing.done():
            return
        refreshing, self._refreshing = self._refreshing, None
        try:
            self._use(refreshing.result())
        except PoolError as exc:  # live actors remain: go on with them
            log.warning("pool %s: refreshing endpoints failed: %s",
                        self._address.pool_name, exc)
