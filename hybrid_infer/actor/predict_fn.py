"""A pool actor that serves a user's `make_predict_fn` (predict_batch_udf's contract).

PySpark's predict_batch_udf calls `make_predict_fn` once per Spark Python worker and
caches it per UDF object. Here the registry starts a pool whose actors each call it
once, when they start, and keep the returned `predict` function for every later job and
every UDF object built from the same function and settings: the pool is keyed by a
digest of the cloudpickled `make_predict_fn` plus the UDF's settings (PredictFnSpec).

The actor takes already-shaped NumPy inputs (the Spark side converts columns exactly
as PySpark does) and returns the raw predictions; validation of the result against
the return type also stays on the Spark side, so error messages match PySpark's.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import threading
import time
from dataclasses import dataclass

import pyarrow as pa

from hybrid_infer.actor.resources import default_torch_threads
from hybrid_infer.actor.service import PoolActor
from hybrid_infer.servable import Servable, resolve_payload
from hybrid_infer.transport.protocol import PredictRequest, batch_object, object_batch


@dataclass(frozen=True)
class PredictFnSpec(Servable):
    """What a predict-function pool serves: the pickled `make_predict_fn` + UDF settings.

    settings_text is a canonical description of the UDF's settings (return type,
    batch size, tensor shapes, input names): two UDFs share a pool only when their
    functions pickle to the same bytes and these settings are equal.
    """

    pickled_make_predict_fn: bytes
    settings_text: str

    @property
    def digest(self) -> str:
        hasher = hashlib.sha256(self.pickled_make_predict_fn)
        hasher.update(self.settings_text.encode())
        return hasher.hexdigest()

    @property
    def identity(self) -> str:
        return f"predict_fn:{self.settings_text}"

    # -- the Servable contract: NumPy inputs and predictions travel pickled, one
    # PredictRequest (one batch of batch_size rows at most) per Arrow row --------------
    def payload_digest(self) -> str:
        return self.digest

    def build_payload(self) -> bytes:
        return self.pickled_make_predict_fn

    def actor_class(self) -> type:
        return PredictFnActor


class PredictFnActor(PoolActor):
    """Wrapped with ray.remote by the registry. Runs make_predict_fn once, at start.
    Its Flight service, ping and status come from PoolActor."""

    def __init__(self, spec: PredictFnSpec, payload: bytes, settings, pool_name: str,
                 index: int, node_threads: int | None = None):
        import pickle

        started = time.time()
        self.pool_name = pool_name
        self.index = index
        # cloudpickle output loads with pickle
        make_predict_fn = pickle.loads(resolve_payload(payload))
        self.predict_fn = make_predict_fn()
        # torch threads: when asked, or this actor's share of its node's cores (a CPU
        # pool sized by default), where Ray would leave torch on one (OMP_NUM_THREADS=1).
        # Only asked threads import torch: the user's model may not be torch.
        threads = settings.torch_threads or (
            default_torch_threads(None, node_threads) if node_threads else None)
        if threads and (settings.torch_threads or "torch" in sys.modules):
            import torch

            torch.set_num_threads(threads)
        self.torch_threads = threads
        self.model_loads = 1
        self.load_seconds = time.time() - started
        self.started_at = started
        # User predict functions are not assumed thread-safe: one batch at a time.
        self._lock = threading.Lock()
        self.requests = self.batches = self.rows = self.max_batch_rows = 0
        self.model_seconds = 0.0
        self.last_used = time.time()

    def parameter_names(self) -> list[str]:
        """The predict function's parameters: their count picks single vs several inputs."""
        return list(inspect.signature(self.predict_fn).parameters)

    def serve_batch(self, batch: pa.RecordBatch, options=None,
                    stream_started: float | None = None) -> pa.RecordBatch:
        """One batch at a time, in no particular order (a user's function is one call)."""
        return object_batch(self.infer(batch_object(batch)))

    def infer(self, request: PredictRequest, options=None):
        """predict_fn(*inputs) for one batch."""
        with self._lock:
            started = time.perf_counter()
            self.requests += 1
            try:
                return self.predict_fn(*request.inputs)
            finally:
                self.model_seconds += time.perf_counter() - started
                self.batches += 1
                self.rows += request.num_rows
                self.max_batch_rows = max(self.max_batch_rows, request.num_rows)
                self.last_used = time.time()

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "rows": self.rows,
            "max_batch_rows": self.max_batch_rows,
            "torch_threads": self.torch_threads,  # None: left as the predict function found it
            "model_seconds": round(self.model_seconds, 3),
            "last_used": self.last_used,
        }
