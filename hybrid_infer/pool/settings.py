"""A pool's settings, split by lifetime, and what makes two pools the same (PoolKey).

Three parts, each read by one party:

- ActorSettings: what and how an actor computes. Fixed when the pool starts; the pool
  key is derived from every one of its fields, so a job that differs in any of them
  gets its own pool, never a silently reused one. Actors receive only this part.
- PlacementSettings: how many actors (and the bounds it scales within), where they
  run, how long starting may take and when the idle pool scales down. Read by the
  pool's manager when it starts, scales and reaps; a later job's different values do
  not restart a running pool (it logs a warning naming the pool's own values, which
  `pool status` also shows).
- ClientSettings: how one job's tasks talk to the pool (window, batch timeout, rows
  per request). Read by the job's caller only, per job; never part of the pool.

`PoolSettings` bundles the three for users: `PoolSettings(num_actors=2, batch_size=16)`
routes each keyword to the part that owns it; a field is read from its part
(`settings.actor.batch_size`), one way only.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace

from hybrid_infer.errors import ConfigurationError
from hybrid_infer.transport.gate import parse_port_range

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
#: One-time model optimisations a long-lived actor can afford (see actor/runner.py).
OPTIMIZATIONS = ("none", "freeze", "compile")
#: Where an actor decodes images (see actor/device_pipeline.py): "gpu" decodes JPEGs on the
#: actor's device (nvJPEG), "cpu" with PIL, "auto" on the GPU when the actor has one.
DECODES = ("auto", "gpu", "cpu")
#: Defaults resolved per device (ActorSettings.for_device): a GPU needs large batches
#: (ResNet-50 at batch 32 reaches 31% of batch 256 on an H200) and bf16 + channels_last.
DEVICE_DEFAULTS = {"cpu": {"batch_size": 32, "precision": "fp32", "channels_last": True},
                   "cuda": {"batch_size": 256, "precision": "bf16", "channels_last": True}}


def _at_least(owner, minimum, *names: str, optional: bool = False) -> None:
    for name in names:
        value = getattr(owner, name)
        if (value is not None or not optional) and value < minimum:
            comparison = ">= 1" if minimum == 1 else f">= {minimum}"
            raise ConfigurationError(f"{name} must be {comparison}, got {value}")


def _positive(owner, *names: str) -> None:
    for name in names:
        if getattr(owner, name) <= 0:
            raise ConfigurationError(f"{name} must be > 0, got {getattr(owner, name)}")


@dataclass(frozen=True)
class ActorSettings:
    """What and how each actor computes: every field is part of the pool key.

    batch_size, precision, channels_last: None means the device's default
    (DEVICE_DEFAULTS: 32 / fp32 + channels_last on CPU; 256 / bf16 + channels_last on
    CUDA).
    decode: "auto" (on the GPU when the actor has one, else today's CPU decode), "gpu"
    (JPEGs decoded batched on the actor's device; on a CPU actor torchvision's CPU
    decoder stands in for nvJPEG), or "cpu" (PIL; on a GPU actor in worker processes,
    sending uint8 to the GPU).
    batch_size: rows an actor computes at once, shared by its streams.
    device: "auto" (a GPU when the actor has one), "cpu" or "cuda".
    precision: autocast dtype ("fp32" disables autocast).
    channels_last: run the model in channels-last memory format. On CPU only the
    batches are made channels-last (convolutions follow their input's format, 1.3x to
    1.5x faster for torchvision's CNNs on oneDNN), so the weights stay the object
    store's single copy; on a GPU the module is converted too.
    optimize: a one-time optimisation paid once per actor at pool start: "freeze"
    (TorchScript freeze + optimize_for_inference: conv-bn folding, fused ops, fp32
    predictions unchanged within 1e-4) or "compile" (torch.compile). Either gives each
    actor its own copy of the (folded) weights instead of the shared object-store copy.
    torch_threads: torch threads per actor. None: a CPU actor runs on the cores of the
    node it was placed on (shared with this pool's other actors there) unless
    num_cpus_per_actor is given, then that many (rounded up); a GPU actor takes the
    CPUs Ray assigned it; outside Ray, the machine's cores. See PlacementSettings for
    the whole rule.
    streams: model threads per actor, each computing batch_size / streams rows on
    torch_threads / streams intra-op threads. None: on CPU one single-threaded stream
    per torch thread (faster than one batch over several threads: no synchronisation
    at every layer); on GPU, and with optimize="compile", one stream.
    decode_threads: threads decoding images in each actor (single-threaded torch each).
    max_batch_bytes: host memory cap for one model call's input tensor; a larger call
    fails like an out-of-memory error and is split (None: no cap).
    embedding_layer: return this layer's output (flattened) as `prediction` instead of
    the model's final output, e.g. "avgpool" for a ResNet's 512/2048-d embeddings.
    tls_cert, tls_key: PEM files (readable at these paths on every Ray node) for the
    pool's Arrow Flight services: Spark tasks then reach it over TLS, checking this
    certificate (None: plain gRPC; every call still carries the pool's token).
    """

    batch_size: int | None = None
    device: str = "auto"
    precision: str | None = None
    channels_last: bool | None = None
    optimize: str = "none"
    torch_threads: int | None = None
    streams: int | None = None
    decode_threads: int = 2
    max_batch_bytes: int | None = None
    embedding_layer: str | None = None
    decode: str = "auto"
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self):
        for name, allowed in (("device", DEVICES), ("precision", PRECISIONS + (None,)),
                              ("optimize", OPTIMIZATIONS), ("decode", DECODES)):
            if getattr(self, name) not in allowed:
                raise ConfigurationError(
                    f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.optimize == "freeze" and self.embedding_layer:
            raise ConfigurationError(
                "optimize='freeze' drops the hook that reads embedding_layer: use "
                "optimize='none' or 'compile' for embeddings")
        if self.optimize == "freeze" and self.precision not in (None, "fp32"):
            raise ConfigurationError(
                "optimize='freeze' runs in fp32 only (TorchScript does not trace autocast): "
                "use precision='fp32', or optimize='compile' for bf16/fp16")
        _at_least(self, 1, "decode_threads")
        _at_least(self, 1, "batch_size", "torch_threads", "streams", "max_batch_bytes",
                  optional=True)
        if self.streams is not None and self.streams > 1 and self.optimize == "compile":
            raise ConfigurationError(
                "optimize='compile' runs one stream per actor (a torch.compile'd module is "
                "not safe to call from several threads): leave streams unset or use 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigurationError(
                "TLS needs both tls_cert and tls_key (PEM files on every Ray node): pass "
                "both, or neither for plain Flight")

    def for_device(self, device: str) -> "ActorSettings":
        """These settings with the defaults left as None resolved for `device` ("cpu" or
        "cuda..."); optimize="freeze" keeps fp32."""
        defaults = dict(DEVICE_DEFAULTS["cpu" if device == "cpu" else "cuda"])
        if self.optimize == "freeze":
            defaults["precision"] = "fp32"
        resolved = {name: value for name, value in defaults.items()
                    if getattr(self, name) is None}
        return replace(self, **resolved) if resolved else self

    def stream_layout(self, device: str, threads: int) -> tuple[int, int]:
        """(streams, torch threads per stream) for an actor on `device` with `threads`."""
        streams = self.streams
        if streams is None:
            streams = threads if device == "cpu" and self.optimize != "compile" else 1
        batch_size = self.for_device(device).batch_size
        streams = max(1, min(streams, batch_size))
        return streams, max(1, threads // streams)


@dataclass(frozen=True)
class PlacementSettings:
    """How the pool is sized and placed, and how long its manager waits.

    The default rule, when none of num_actors, num_cpus_per_actor and torch_threads
    is given (each given one wins):
    - a CPU pool starts one actor, which holds one Ray CPU (a slot: other pools and Ray
      Data tasks still fit beside it) and runs its model on all the cores of the node
      it was placed on, as a per-task UDF's torch would; under load it grows to one
      actor per node, each on its node's cores;
    - a GPU pool runs one actor per GPU, and grows as GPUs are added;
    - busy pools grow (pool/scaling.py), and idle pools give their actors back to a
      pool that cannot be placed (pool/pressure.py), least recently used first.

    num_actors: the size the pool scales up to when work arrives (at start, and when a
    job finds it scaled down); None means one per GPU in the cluster, or one when there
    is none, within [min_actors, max_actors]. A pool given num_actors keeps that size
    under load unless max_actors is larger.
    min_actors: what an idle pool keeps (0: an idle pool frees every actor and keeps
    only its manager and the weights' object-store copy; the next job scales it up).
    It also bounds what the pool gives back to other pools.
    max_actors: the most actors the pool may grow to under load (None: num_actors when
    given, else what the cluster holds: one per GPU, or one per node on CPU).
    num_cpus_per_actor: Ray CPUs per actor, and then also its torch threads (None: one
    Ray CPU, and the node's cores for the model: see the rule above).
    num_gpus_per_actor: Ray GPUs per actor; may be
    fractional (0.5: two actors share a GPU); None: one GPU per actor for
    device="cuda", even before the cluster has a GPU node (an autoscaler adds one for
    actors waiting for it); for device="auto", one when the cluster has GPUs when the
    pool starts, else none (pass device="cuda" on an autoscaling cluster whose GPU
    nodes are not up yet); see pool/placement.py. An actor holding a GPU that torch
    cannot use fails to start with the reason (actor/resources.py).
    idle_timeout_s: the pool scales down to min_actors after this long without work and
    without a job holding a lease on it (0: never). Only `pool stop` stops it.
    build_timeout_s: starting fails when building the weights into the object store
    takes longer (a large checkpoint read from slow storage may need more).
    place_timeout_s: starting or scaling fails when new actors are not placed and
    loaded within this time, e.g. when the cluster lacks the resources they ask for
    (after idle pools gave way: the error names the pools that hold them).
    grow_after_s: a pool below its ceiling grows by one actor once its actors stayed
    busy this long while a job holds a lease (pool/scaling.py).
    shrink_after_s: a pool grown past num_actors gives one actor back once its load
    stayed low this long.
    flight_port_range: (first, last), or "first-last": the ports the pool's Flight
    servers (its manager, each actor) listen on, so that a firewall between Spark and
    the pool opens only these; each host needs one port per pool server it runs. None:
    ports the OS picks. A server finding every port taken fails naming the range.
    """

    num_actors: int | None = None
    min_actors: int = 0
    max_actors: int | None = None
    num_cpus_per_actor: float | None = None
    num_gpus_per_actor: float | None = None
    idle_timeout_s: float = 3600.0
    build_timeout_s: float = 600.0
    place_timeout_s: float = 300.0
    grow_after_s: float = 6.0
    shrink_after_s: float = 60.0
    flight_port_range: tuple[int, int] | None = None

    def __post_init__(self):
        object.__setattr__(self, "flight_port_range",
                           parse_port_range(self.flight_port_range))
        _at_least(self, 1, "num_actors", "max_actors", optional=True)
        _at_least(self, 0, "min_actors", "idle_timeout_s")
        _at_least(self, 0, "num_cpus_per_actor", "num_gpus_per_actor", optional=True)
        _positive(self, "build_timeout_s", "place_timeout_s", "grow_after_s", "shrink_after_s")
        if self.max_actors is not None and self.min_actors > self.max_actors:
            raise ConfigurationError(
                f"min_actors ({self.min_actors}) must be <= max_actors ({self.max_actors}): "
                "lower min_actors or raise max_actors")
        if self.num_actors is not None and self.bounded(self.num_actors) != self.num_actors:
            raise ConfigurationError(
                f"num_actors ({self.num_actors}) must be within min_actors "
                f"({self.min_actors}) and max_actors ({self.max_actors}): change one of them")

    def bounded(self, num_actors: int) -> int:
        """`num_actors` moved into [min_actors, max_actors]."""
        if self.max_actors is not None:
            num_actors = min(num_actors, self.max_actors)
        return max(self.min_actors, num_actors)


def check_actor_count(num_actors, placement: PlacementSettings | None = None) -> int:
    """A size someone asked a pool to scale to: a ConfigurationError (a ValueError) that
    says what to do unless it is a whole number >= 0, within the pool's bounds."""
    if isinstance(num_actors, bool) or not isinstance(num_actors, int) or num_actors < 0:
        raise ConfigurationError(
            f"a pool's number of actors must be a whole number >= 0, got {num_actors!r}: "
            "pass 0 to free every actor until the next job arrives, or stop the pool "
            "(hybrid-infer pool stop) to free everything")
    if placement is not None and placement.bounded(num_actors) != num_actors:
        raise ConfigurationError(
            f"this pool keeps between {placement.min_actors} (min_actors) and "
            f"{placement.max_actors if placement.max_actors is not None else 'any number of'}"
            f" (max_actors) actors, so it cannot scale to {num_actors}: pick a size within "
            "them, or start a pool with other bounds")
    return num_actors


@dataclass(frozen=True)
class ClientSettings:
    """How one job's tasks talk to the pool; read by the job's caller, per job.

    max_in_flight: batches each Spark task keeps in flight per actor (backpressure).
    batch_timeout_s: the job fails with a clear error when one batch gets no answer
    in time (the actor also gives up on that batch then).
    rows_per_batch: rows a task sends per request.
    plan_lease_s: how long building this job's plan (infer()) holds the pool at its
    size, so that tasks that start slowly find warm actors; each task then holds its own
    lease while it maps. A plan run later still works: the pool scales back up for it.
    """

    max_in_flight: int = 2
    batch_timeout_s: float = 600.0
    rows_per_batch: int = 64
    plan_lease_s: float = 120.0

    def __post_init__(self):
        _at_least(self, 1, "max_in_flight", "rows_per_batch")
        _at_least(self, 0, "plan_lease_s")
        _positive(self, "batch_timeout_s")


#: PoolSettings' parts, by attribute name.
PARTS = {"actor": ActorSettings, "placement": PlacementSettings, "client": ClientSettings}

#: Settings that were renamed or split: the old name -> what to use instead.
RENAMED = {"start_timeout_s": "build_timeout_s (building the weights) and place_timeout_s "
                              "(placing and loading the actors)"}


def route_fields(values: dict, groups: dict[str, type], owner: str) -> dict[str, dict]:
    """Split keyword `values` by the dataclass in `groups` that has a field of that name.

    Raises ConfigurationError for a name no group has, naming the closest ones.
    """
    owners = {f.name: group for group, cls in groups.items() for f in fields(cls)}
    routed: dict[str, dict] = {group: {} for group in groups}
    for name, value in values.items():
        if name in owners:
            routed[owners[name]][name] = value
        elif name in RENAMED:
            raise ConfigurationError(f"{owner}: {name!r} is gone; use {RENAMED[name]}")
        else:
            close = difflib.get_close_matches(name, owners, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ConfigurationError(f"{owner} has no setting {name!r}: {hint}the settings "
                                     f"are {', '.join(sorted(owners))}")
    return routed


def _check_disjoint(groups: dict[str, type]) -> None:
    seen: dict[str, str] = {}
    for group, cls in groups.items():
        for f in fields(cls):
            assert f.name not in seen, f"{f.name} is in both {seen[f.name]} and {group}"
            seen[f.name] = group


_check_disjoint(PARTS)


@dataclass(frozen=True, init=False)
class PoolSettings:
    """The user-facing bundle of a pool's settings: .actor, .placement and .client.

    PoolSettings(num_actors=2, batch_size=16, batch_timeout_s=60) routes each keyword
    to the part that owns it; parts may also be given whole (actor=ActorSettings(...)),
    and keywords then override their fields. A field is read from its part:
    settings.actor.batch_size, settings.placement.num_actors, settings.client.max_in_flight.
    """

    actor: ActorSettings
    placement: PlacementSettings
    client: ClientSettings

    def __init__(self, actor: ActorSettings | None = None,
                 placement: PlacementSettings | None = None,
                 client: ClientSettings | None = None, **settings):
        given = {"actor": actor, "placement": placement, "client": client}
        for name, changes in route_fields(settings, PARTS, "PoolSettings").items():
            part = given[name] if given[name] is not None else PARTS[name]()
            if not isinstance(part, PARTS[name]):
                raise ConfigurationError(f"PoolSettings({name}=...) takes "
                                         f"{PARTS[name].__name__}, got {type(part).__name__}")
            object.__setattr__(self, name, replace(part, **changes) if changes else part)

    def replace(self, **settings) -> "PoolSettings":
        """A copy with these fields (of any part) changed."""
        return PoolSettings(self.actor, self.placement, self.client, **settings)

    def with_parts(self, changes: dict[str, dict]) -> "PoolSettings":
        """A copy with each part's fields changed: {"actor": {...}, "placement": {...},
        "client": {...}}, as route_fields splits them (nothing is routed again)."""
        parts = {name: replace(getattr(self, name), **changes[name])
                 if changes.get(name) else getattr(self, name) for name in PARTS}
        return PoolSettings(**parts)

    def stream_layout(self, device: str, threads: int) -> tuple[int, int]:
        return self.actor.stream_layout(device, threads)


@dataclass(frozen=True)
class PoolKey:
    """Model identity + weights digest + every actor setting. Equal keys share one pool."""

    model_identity: str
    weights_digest: str
    compute: dict = field(default_factory=dict)

    @classmethod
    def derive(cls, model_identity: str, weights_digest: str,
               actor: ActorSettings) -> "PoolKey":
        return cls(model_identity, weights_digest, asdict(actor))

    @property
    def name(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return "pool-" + hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.model_identity} weights={self.weights_digest[:12]} {self.compute}"
