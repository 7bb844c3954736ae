"""PoolActor: what every pool actor supplies, whatever it serves.

- `serve(token, tls_cert, tls_key, port_range)`: start this actor's Arrow Flight
  service on its node's address (127.0.0.1 in an embedded runtime), on a port of
  `port_range` when given (PlacementSettings.flight_port_range), and return its URI. The pool's
  manager calls it right after the actor loaded its model; Spark tasks then stream
  batches to that URI (transport/client.py) without Ray. A replacement manager that
  adopts this actor calls it again with its own token: the service then accepts both
  (its latest two managers' tokens), so the jobs still streaming with the old
  manager's token go on.
- `serve_batch(batch, options, stream_started)`: one request batch -> one result batch;
  by default `self.infer(batch, options, stream_started)`, the subclass's entry point
  (`stream_started`, the time.monotonic() its stream began, ranks its rows: the oldest
  stream's first, batching.request_order).
- `ping()`, and `status()`: the fields every actor reports plus the subclass's `stats()`.
- `job_rows(job_id)`: rows this actor answered for one job (its streams' options carry
  `job_id`): the driver's progress line adds them up over the pool (progress.py).

Subclasses set `pool_name`, `index`, `started_at`, `model_loads`, `load_seconds`.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa

from hybrid_infer.actor.job_rows import JobRowCounter


class PoolActor:
    _service = None
    _job_row_counter = None

    def serve(self, token: str, tls_cert: str | None = None, tls_key: str | None = None,
              port_range: tuple[int, int] | None = None) -> str:
        from hybrid_infer.transport.server import FlightService

        if self._service is None:
            self._job_row_counter = JobRowCounter()  # before the first stream can arrive
            self._service = FlightService(self._stream_handler, token=token,
                                          host=node_address(), port_range=port_range,
                                          tls_cert=tls_cert, tls_key=tls_key,
                                          stream_kinds=("infer",))
        else:
            self._service.accept_token(token)
        return self._service.uri

    def _stream_handler(self, kind: str, options):
        if kind != "infer":
            raise ValueError(f"this actor serves 'infer' streams, not {kind!r}")
        job_id = getattr(options, "job_id", None)
        stream_started = time.monotonic()

        def serve(batch: pa.RecordBatch) -> pa.RecordBatch:
            result = self.serve_batch(batch, options, stream_started)
            self._job_row_counter.add(job_id, batch.num_rows)
            return result

        return serve

    def serve_batch(self, batch: pa.RecordBatch, options,
                    stream_started: float | None = None) -> pa.RecordBatch:
        return self.infer(batch, options, stream_started)

    def ping(self) -> bool:
        return True

    def job_rows(self, job_id: str) -> int:
        return self._job_row_counter.rows(job_id) if self._job_row_counter else 0

    def stats(self) -> dict:
        """requests, batches, rows, model_seconds, last_used and the subclass's own."""
        raise NotImplementedError

    def status(self) -> dict:
        import ray

        context = ray.get_runtime_context()
        return {
            "index": self.index,
            "actor_id": context.get_actor_id(),
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "endpoint": self._service.uri if self._service else None,
            # most request batches this actor held at once (the clients' windows bound it)
            "held_batches_peak": self._service.held_peak if self._service else 0,
            # held now, and wall seconds with any held: the pool's utilisation signal
            "held_batches": self._service.held if self._service else 0,
            "busy_s": round(self._service.busy.seconds(), 3) if self._service else 0.0,
            "uptime_s": round(time.time() - self.started_at, 1),
            "model_loads": self.model_loads,
            "load_seconds": round(self.load_seconds, 3),
            **self.stats(),
        }


def node_address() -> str:
    """This process's Ray node address: where its Flight service listens."""
    import ray

    return ray.util.get_node_ip_address()
