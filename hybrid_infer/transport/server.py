"""The Arrow Flight service a pool process runs (each actor, and the pool's manager).

`FlightService` listens on `host` (the process's Ray node address: 127.0.0.1 for an
embedded runtime), on a port the OS picks, with TLS when a certificate is configured,
and refuses every call that does not carry the pool's token (or, on an actor a new
manager adopted, one of its managers' tokens).

DoExchange: the client sends a header (what it wants served and the job's options,
once per stream) and then request batches; the service runs `handler(kind, options)`'s
function on each batch in a thread pool (several batches of one stream may be in
flight: the client bounds how many) and streams the results back in request order.
A failure of the served code ends the stream with its type and message
(protocol.app_error_info), which the client raises again; anything else is a
transport failure, which the client answers by resending the batch elsewhere.

Actions: "ping", plus what the owner adds (the manager adds "endpoints" and "lease").
"""

from __future__ import annotations

import hmac
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pyarrow.flight as flight

from hybrid_infer.transport.busy import BusyTime
from hybrid_infer.transport.protocol import (AUTH_HEADER, app_error_info, bearer,
                                             decode_header, loads_options)

log = logging.getLogger(__name__)

#: handler(kind, options) -> the function serving one request batch of that stream
Handler = Callable[[str, object], Callable]


class _TokenCheck(flight.ServerMiddlewareFactory):
    """Accepts the tokens it was given: one, or more after a new pool manager adopted
    this server (its jobs in flight keep the old token; see PoolActor.serve)."""

    def __init__(self, token: str):
        super().__init__()
        self._expected = (bearer(token),)

    def accept(self, token: str) -> None:
        if bearer(token) not in self._expected:
            self._expected = self._expected + (bearer(token),)  # one swap: no lock needed

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
        return None


def read_tls_pair(cert_path: str | None, key_path: str | None) -> list | None:
    if not cert_path:
        return None
    with open(cert_path, "rb") as cert, open(key_path, "rb") as key:
        return [flight.CertKeyPair(cert.read(), key.read())]


class FlightService(flight.FlightServerBase):
    def __init__(self, handler: Handler | None, *, token: str, host: str = "127.0.0.1",
                 port: int = 0, tls_cert: str | None = None, tls_key: str | None = None,
                 actions: dict[str, Callable[[bytes], bytes]] | None = None,
                 max_workers: int = 64):
        scheme = "grpc+tls" if tls_cert else "grpc+tcp"
        self._token_check = _TokenCheck(token)
        super().__init__(f"{scheme}://{host}:{port}",
                         tls_certificates=read_tls_pair(tls_cert, tls_key),
                         middleware={"auth": self._token_check})
        self.uri = f"{scheme}://{host}:{self.port}"
        self._handler = handler
        self._actions = {"ping": lambda body: b"ok", **(actions or {})}
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="flight-infer")
        self.busy = BusyTime()  # request batches held now, and for how long in all

    def accept_token(self, token: str) -> None:
        """Also accept `token` from now on; tokens accepted before stay valid."""
        self._token_check.accept(token)

    # -- DoExchange: request batches in, result batches out, in order -------------------
    def do_exchange(self, context, descriptor, reader, writer):
        kind, blob = decode_header(descriptor.command)
        try:
            serve = self._handler(kind, loads_options(blob))
        except Exception as exc:
            raise _app_error(exc) from None
        answers: queue.Queue = queue.Queue()
        # The handler's thread reads requests; a writer thread answers them in order as
        # they finish. Both end here, before the handler returns (the reader and writer
        # die with the call).
        writing = threading.Thread(target=self._answer, args=(answers, writer), daemon=True,
                                   name="flight-answer")
        writing.start()
        try:
            while True:
                chunk = reader.read_chunk()
                answers.put(self._executor.submit(self._held, serve, chunk.data))
        except StopIteration:
            pass
        except Exception as exc:  # the client went away: nothing left to answer
            log.debug("stream from %s ended: %s", context.peer(), exc)
        finally:
            answers.put(None)
            writing.join()

    def _held(self, serve, batch):
        self.busy.enter()
        try:
            return serve(batch)
        finally:
            self.busy.leave()

    @property
    def held(self) -> int:
        """Request batches received and not answered yet, all streams."""
        return self.busy.held

    @property
    def held_peak(self) -> int:
        return self.busy.held_peak

    @staticmethod
    def _answer(answers: queue.Queue, writer) -> None:
        """Write each answer in request order; a failure of the served code is sent as
        metadata (the client raises it and ends the stream); after a failed write, the
        remaining answers are only waited for."""
        begun = broken = False
        while (answer := answers.get()) is not None:
            try:
                result = answer.result()
            except Exception as exc:
                result = exc
            if broken:
                continue
            try:
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

    def stop(self) -> None:
        self.shutdown()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _app_error(exc: BaseException) -> flight.FlightServerError:
    return flight.FlightServerError(f"{type(exc).__name__}: {exc}",
                                    extra_info=app_error_info(exc))
