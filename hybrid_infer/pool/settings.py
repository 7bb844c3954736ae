"""What a pool is made of (PoolSettings) and what makes two pools the same (PoolKey)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from hybrid_infer.errors import ConfigurationError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class PoolSettings:
    """How many actors, where they run and how each one computes.

    num_actors: None means one per GPU in the cluster, or one when there is none.
    num_gpus_per_actor may be fractional (e.g. 0.5: two actors share a GPU).
    precision: autocast dtype on GPU ("fp32" disables autocast).
    max_in_flight: batches each Spark task keeps in flight per actor (backpressure).
    idle_timeout_s: the pool stops itself after this long without work (0: never).
    embedding_layer: return this layer's output (flattened) as `prediction` instead of
    the model's final output, e.g. "avgpool" for a ResNet's 512/2048-d embeddings.
    """

    num_actors: int | None = None
    batch_size: int = 32
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float | None = None
    torch_threads: int | None = None
    decode_threads: int = 2
    max_in_flight: int = 2
    idle_timeout_s: float = 3600.0
    batch_timeout_s: float = 600.0
    embedding_layer: str | None = None

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ConfigurationError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigurationError(
                f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigurationError(f"num_actors must be >= 1, got {self.num_actors}")
        if self.max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be >= 1, got {self.max_in_flight}")

    def compute_settings(self) -> dict:
        """The settings that change what an actor computes: part of the pool's key."""
        return {"device": self.device, "precision": self.precision,
                "channels_last": self.channels_last, "batch_size": self.batch_size,
                "embedding_layer": self.embedding_layer}


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
