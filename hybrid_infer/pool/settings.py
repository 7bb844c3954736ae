"""What a pool is made of (PoolSettings) and what makes two pools the same (PoolKey)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from hybrid_infer.errors import ConfigurationError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
#: One-time model optimisations a long-lived actor can afford (see actor/runner.py).
OPTIMIZATIONS = ("none", "freeze", "compile")


@dataclass(frozen=True)
class PoolSettings:
    """How many actors, where they run and how each one computes.

    num_actors: None means one per GPU in the cluster, or one when there is none.
    num_gpus_per_actor may be fractional (e.g. 0.5: two actors share a GPU).
    precision: autocast dtype on GPU ("fp32" disables autocast).
    max_in_flight: batches each Spark task keeps in flight per actor (backpressure).
    idle_timeout_s: the pool stops itself after this long without work (0: never).
    start_timeout_s: starting or scaling fails with a clear error when new actors cannot
    be placed (or load) within this time, e.g. when the cluster lacks the resources.
    batch_timeout_s: a job fails with a clear error when one batch gets no answer in time.
    batch_size: rows an actor computes at once, shared by its streams.
    streams: model threads per actor, each computing batch_size / streams rows on
    torch_threads / streams intra-op threads. None: on CPU one single-threaded stream
    per torch thread (faster than one batch over several threads: no synchronisation
    at every layer); on GPU, and with optimize="compile", one stream.
    decode_threads: threads decoding images in each actor (single-threaded torch each).
    max_batch_bytes: host memory cap for one model call's input tensor; a larger call
    fails like an out-of-memory error and is split (None: no cap).
    optimize: a one-time optimisation paid once per actor at pool start: "freeze"
    (TorchScript freeze + optimize_for_inference: conv-bn folding, fused ops, fp32
    predictions unchanged within 1e-4) or "compile" (torch.compile). Either gives each
    actor its own copy of the (folded) weights instead of the shared object-store copy.
    embedding_layer: return this layer's output (flattened) as `prediction` instead of
    the model's final output, e.g. "avgpool" for a ResNet's 512/2048-d embeddings.
    tls_cert, tls_key: PEM files (readable at these paths on every Ray node) for the
    pool's Arrow Flight services: Spark tasks then reach it over TLS, checking this
    certificate (None: plain gRPC; every call still carries the pool's token).
    """

    num_actors: int | None = None
    batch_size: int = 32
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    optimize: str = "none"
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float | None = None
    torch_threads: int | None = None
    streams: int | None = None
    decode_threads: int = 2
    max_in_flight: int = 2
    idle_timeout_s: float = 3600.0
    batch_timeout_s: float = 600.0
    start_timeout_s: float = 300.0
    max_batch_bytes: int | None = None
    embedding_layer: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ConfigurationError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigurationError(
                f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimize not in OPTIMIZATIONS:
            raise ConfigurationError(
                f"optimize must be one of {OPTIMIZATIONS}, got {self.optimize!r}")
        if self.optimize == "freeze" and self.embedding_layer:
            raise ConfigurationError(
                "optimize='freeze' drops the hook that reads embedding_layer: use "
                "optimize='none' or 'compile' for embeddings")
        if self.optimize == "freeze" and self.precision != "fp32":
            raise ConfigurationError(
                "optimize='freeze' runs in fp32 only (TorchScript does not trace autocast): "
                "use precision='fp32', or optimize='compile' for bf16/fp16")
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigurationError(f"num_actors must be >= 1, got {self.num_actors}")
        if self.batch_timeout_s <= 0:
            raise ConfigurationError(f"batch_timeout_s must be > 0, got {self.batch_timeout_s}")
        if self.max_batch_bytes is not None and self.max_batch_bytes < 1:
            raise ConfigurationError(f"max_batch_bytes must be >= 1, got {self.max_batch_bytes}")
        if self.streams is not None and self.streams < 1:
            raise ConfigurationError(f"streams must be >= 1, got {self.streams}")
        if self.streams is not None and self.streams > 1 and self.optimize == "compile":
            raise ConfigurationError(
                "optimize='compile' runs one stream per actor (a torch.compile'd module is "
                "not safe to call from several threads): leave streams unset or use 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigurationError("TLS needs both tls_cert and tls_key (PEM files)")
        if self.max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be >= 1, got {self.max_in_flight}")

    def stream_layout(self, device: str, threads: int) -> tuple[int, int]:
        """(streams, torch threads per stream) for an actor on `device` with `threads`."""
        streams = self.streams
        if streams is None:
            streams = threads if device == "cpu" and self.optimize != "compile" else 1
        streams = max(1, min(streams, self.batch_size))
        return streams, max(1, threads // streams)

    def compute_settings(self) -> dict:
        """The settings that change what an actor computes: part of the pool's key."""
        compute = {"device": self.device, "precision": self.precision,
                   "channels_last": self.channels_last, "batch_size": self.batch_size,
                   "optimize": self.optimize, "embedding_layer": self.embedding_layer,
                   "torch_threads": self.torch_threads, "streams": self.streams}
        if self.max_batch_bytes is not None:
            compute["max_batch_bytes"] = self.max_batch_bytes
        return compute


@dataclass(frozen=True)
class PoolKey:
    """Model identity + weights digest + compute settings. Equal keys share one pool."""

    model_identity: str
    weights_digest: str
    compute: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return "pool-" + hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.model_identity} weights={self.weights_digest[:12]} {self.compute}"
