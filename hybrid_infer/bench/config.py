"""The benchmark's typed configuration: one run's (BenchConfig, from the command line)
and one contender's (ContenderConfig, written as JSON for the contender's process)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field

from hybrid_infer.dataclass_options import (add_dataclass_options, dataclass_values,
                                            field_docs, with_option_names)
from hybrid_infer.errors import ConfigurationError
from hybrid_infer.pool.settings import OPTIMIZATIONS, PRECISIONS, ActorSettings

@dataclass(frozen=True)
class Contender:
    """A contender of the run: the module that runs it, whether it uses the optimised
    model, and whether it is a user's own recipe (PySpark's or Ray's documented code:
    the plain module, fp32 and contiguous, unless --precision/--channels-last tune
    every contender alike) rather than one of the engine's modes (the device's
    defaults, DEVICE_DEFAULTS)."""

    runner: str  # a module of hybrid_infer.bench.contenders (or any importable module)
    optimized: bool = False
    recipe: bool = False


CONTENDERS: dict[str, Contender] = {
    "ceiling": Contender("ceiling"),
    "ceiling_end": Contender("ceiling"),  # run again last: the machine's load drifts
    "udf": Contender("udf"),
    "predict_batch_udf": Contender("predict_batch_udf", recipe=True),
    "ray_data": Contender("ray_data", recipe=True),
    "hybrid": Contender("hybrid"),
    "hybrid_optimized": Contender("hybrid", optimized=True),
    # hybrid's cold job in a session already holding two idle pools of other models
    "hybrid_third_model": Contender("hybrid_third_model"),
    "raydp": Contender("raydp"),
}
DEFAULT_CONTENDERS = [name for name in CONTENDERS
                      if name not in ("ceiling_end", "hybrid_third_model")]
#: Runners whose first main job starts a pool (reported "cold") and second reuses it.
POOL_RUNNERS = ("hybrid", "raydp", "hybrid_third_model")


@dataclass
class BenchConfig:
    """One benchmark run, as the command line gave it (defaults resolved).

    model: a torchvision name (random weights: the benchmark runs offline).
    images: images in the main job.
    partitions: Spark partitions of the main job.
    threads: one tuning for every contender alike: torch threads for the model, per
    process for the pool and Ray Data (split between actors), split across task slots
    for predict_batch_udf and udf. None: each contender on its own defaults (torch's in
    a Spark worker, the pool's sizing rule); the ceiling then uses every core.
    actors: hybrid pool and Ray Data actors (None: the pool's own sizing rule, one Ray
    Data actor); the threads are split between them.
    spark_slots: local[N] task slots.
    device: "cpu" or "cuda".
    small_jobs: repeated small jobs per mode (their fixed overhead).
    small_rows: rows of each small job.
    sweep_sizes: extra job sizes, comma separated ('' for none).
    sweep_partitions: extra partition counts for the main job size ('' for none).
    full: bigger sweeps: sizes 256,1024,4096 and partitions 2,8,32.
    contenders: a comma separated subset of the CONTENDERS.
    out: where the JSON, Markdown and PNG go.
    workdir: where the images and each contender's files go.
    timeout: seconds per contender: past it, the contender's whole process group is
    killed and it is reported as timed out.

    batch_size, streams, precision, channels_last and optimize are the pool's
    (ActorSettings, whose texts `hybrid-infer bench --help` shows); optimize is the
    hybrid_optimized contender's, and streams the ceiling's layout too.
    """

    model: str = "resnet18"
    images: int = 512
    partitions: int = 4
    batch_size: int = 32
    threads: int | None = None
    actors: int | None = None
    streams: int | None = None
    spark_slots: int = 2
    device: str = "cpu"
    precision: str | None = None
    channels_last: bool | None = None
    optimize: str = "freeze"
    small_jobs: int = 8
    small_rows: int = 64
    sweep_sizes: str = "256"
    sweep_partitions: str = "16"
    full: bool = False
    contenders: str = ",".join(DEFAULT_CONTENDERS)
    out: str = "bench_results"
    workdir: str = "/tmp/hybrid_infer_bench"
    timeout: float = 1800.0

    def __post_init__(self) -> None:
        for name in ("images", "partitions", "batch_size", "threads", "actors",
                     "spark_slots", "small_jobs", "small_rows"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.streams is not None and self.streams < 1:
            raise ConfigurationError(f"streams must be >= 1, got {self.streams}")
        if not self.timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {self.timeout}")
        unknown = sorted(set(self.names) - set(CONTENDERS))
        if unknown:
            raise ConfigurationError(f"unknown contender {', '.join(unknown)}: choose from "
                                     f"{', '.join(CONTENDERS)}")
        try:
            self.sizes, self.partition_counts
        except ValueError:
            raise ConfigurationError("sweep_sizes and sweep_partitions are whole numbers, "
                                     "comma separated") from None
        if self.full:
            self.sweep_sizes, self.sweep_partitions = "256,1024,4096", "2,8,32"
        #: forward-pass options given on the command line: they tune every contender
        self.tuned_forward = [name for name in ("precision", "channels_last")
                              if getattr(self, name) is not None]
        engine = ActorSettings(precision=self.precision, channels_last=self.channels_last
                               ).for_device(self.device)
        self.precision, self.channels_last = engine.precision, engine.channels_last
        if self.optimize == "freeze" and self.precision != "fp32":
            self.optimize = "compile"  # TorchScript freeze runs fp32 only

    def forward(self, contender: Contender) -> tuple[str, bool]:
        """(precision, channels_last) of a contender: the engine's (given or the device's
        defaults); a user's recipe runs the plain module unless they were given."""
        if not contender.recipe:
            return self.precision, self.channels_last
        return (self.precision if "precision" in self.tuned_forward else "fp32",
                self.channels_last if "channels_last" in self.tuned_forward else False)

    @property
    def names(self) -> list[str]:
        return self.contenders.split(",")

    @property
    def sizes(self) -> list[int]:
        return _ints(self.sweep_sizes)

    @property
    def partition_counts(self) -> list[int]:
        return _ints(self.sweep_partitions)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tuned_forward": self.tuned_forward}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


#: The pool's settings the benchmark also takes: their help is ActorSettings'.
POOL_FIELDS = ("batch_size", "streams", "precision", "channels_last", "optimize")
CHOICES = {"device": ("cpu", "cuda"), "precision": PRECISIONS, "optimize": OPTIMIZATIONS}


def build_parser(description: str | None = None, *, out_default: str = "bench_results"):
    """The benchmark's options: one per BenchConfig field (dataclass_options.py)."""
    parser = argparse.ArgumentParser(prog="hybrid-infer bench", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = {**field_docs(BenchConfig), **{name: text for name, text in
                                          field_docs(ActorSettings).items()
                                          if name in POOL_FIELDS}}
    add_dataclass_options(parser, BenchConfig, choices=CHOICES, docs=docs,
                          defaults={"out": out_default})
    return parser


def parse_args(argv=None, *, description: str | None = None,
               out_default: str = "bench_results") -> BenchConfig:
    """The run's BenchConfig; a bad value exits 2 with argparse's usage message."""
    parser = build_parser(description, out_default=out_default)
    try:
        return BenchConfig(**dataclass_values(parser.parse_args(argv), BenchConfig))
    except ConfigurationError as exc:
        parser.error(with_option_names(str(exc), BenchConfig))


@dataclass
class ContenderConfig:
    """What one contender's process is told (written as JSON beside its results)."""

    name: str
    runner: str
    image_dir: str
    work_dir: str
    stamp_dir: str
    model: str
    seed: int
    batch_size: int
    threads: int | None  # None: the contender's own default
    device: str
    precision: str
    channels_last: bool
    optimize: str
    spark_slots: int
    rows: int
    decode_threads: int
    actors: int | None
    streams: int | None
    ray_cpus: int
    object_store_bytes: int
    jobs: list[dict] = field(default_factory=list)

    def save(self, path: str) -> None:
        with open(path, "w") as handle:
            json.dump(dataclasses.asdict(self), handle, indent=2)

    @classmethod
    def load(cls, path: str) -> "ContenderConfig":
        with open(path) as handle:
            return cls(**json.load(handle))
