"""Small real Flight servers for the transport's fast tests (no Ray, no JVM).

`EchoHandler` answers each batch with its `x` column, the serving port and how many
batches of that stream it held at once. Run as a script, it serves in its own process
(so a test can SIGKILL it mid-stream) and prints its URI on stdout.
"""

from __future__ import annotations

import contextlib

import sys
import threading
import time

import pyarrow as pa

from hybrid_infer.transport.server import FlightService


class EchoHandler:
    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.port = 0
        self.most_at_once = 0
        self.batches = 0
        self.headers = 0
        self._lock = threading.Lock()

    def __call__(self, kind: str, options):
        with self._lock:
            self.headers += 1
        if kind == "fail":
            raise ValueError("no such model here")
        held = [0]
        delay = (options or {}).get("delay_s", self.delay_s)

        def serve(batch: pa.RecordBatch) -> pa.RecordBatch:
            with self._lock:
                held[0] += 1
                self.most_at_once = max(self.most_at_once, held[0])
                self.batches += 1
                at_once = held[0]
            try:
                if batch.column(0)[0].as_py() == -1:
                    raise KeyError("row -1 is refused")
                time.sleep(delay)
                n = batch.num_rows
                return pa.RecordBatch.from_arrays(
                    [batch.column(0), pa.array([self.port] * n, pa.int64()),
                     pa.array([at_once] * n, pa.int64())], names=["x", "port", "at_once"])
            finally:
                with self._lock:
                    held[0] -= 1
        return serve


def start(token: str, delay_s: float = 0.0, **kwargs) -> tuple[FlightService, EchoHandler]:
    handler = EchoHandler(delay_s)
    server = FlightService(handler, token=token, **kwargs)
    handler.port = server.gate.port
    return server, handler


if __name__ == "__main__":
    server, _ = start(sys.argv[1], float(sys.argv[2]))
    print(server.uri, flush=True)
    server.serve()


@contextlib.contextmanager
def started(token: str):
    """make(delay_s=0.0, **kwargs) -> (server, handler), each server shut down at the end."""
    servers = []

    def make(delay_s=0.0, **kwargs):
        server, handler = start(token, delay_s, **kwargs)
        servers.append(server)
        return server, handler

    try:
        yield make
    finally:
        for server in servers:
            server.shutdown()
