"""The benchmark's typed configuration: one run's (BenchConfig, from the command line)
and one contender's (ContenderConfig, written as JSON for the contender's process)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field

@dataclass(frozen=True)
class Contender:
    """A contender of the run: the module that runs it, and whether it uses the
    optimised model."""

    runner: str  # a module of hybrid_infer.bench.contenders (or any importable module)
    optimized: bool = False


CONTENDERS: dict[str, Contender] = {
    "ceiling": Contender("ceiling"),
    "ceiling_end": Contender("ceiling"),  # run again last: the machine's load drifts
    "udf": Contender("udf"),
    "predict_batch_udf": Contender("predict_batch_udf"),
    "ray_data": Contender("ray_data"),
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
    """One benchmark run, as the command line gave it (defaults resolved)."""

    model: str = "resnet18"
    images: int = 512
    partitions: int = 4
    batch_size: int = 32
    #: None: every contender on its own defaults (torch's in a Spark worker, the pool's
    #: sizing rule); a number tunes hybrid and predict_batch_udf alike (see --threads)
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
        if self.full:
            self.sweep_sizes, self.sweep_partitions = "256,1024,4096", "2,8,32"
        cuda = self.device == "cuda"
        self.precision = self.precision or ("bf16" if cuda else "fp32")
        self.channels_last = cuda if self.channels_last is None else self.channels_last
        if self.optimize == "freeze" and self.precision != "fp32":
            self.optimize = "compile"  # TorchScript freeze runs fp32 only

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
        return dataclasses.asdict(self)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_parser(description: str | None = None, *, out_default: str = "bench_results"):
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(prog="hybrid-infer bench", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--images", type=int, default=defaults.images,
                        help="images in the main job")
    parser.add_argument("--partitions", type=int, default=defaults.partitions,
                        help="Spark partitions of the main job (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="tune every contender alike: torch threads for the model, per "
                             "process for the pool and Ray Data (split between actors), "
                             "split across task slots for predict_batch_udf and udf "
                             "(default: none, each contender on its own defaults; the "
                             "ceiling then uses every core)")
    parser.add_argument("--actors", type=int, default=defaults.actors,
                        help="hybrid pool and Ray Data actors (default: the pool's own "
                             "sizing rule; Ray Data one)")
    parser.add_argument("--streams", type=int, default=None,
                        help="model threads per hybrid actor (default: the engine's, one "
                             "single-threaded stream per thread on CPU); the ceiling also "
                             "runs this layout")
    parser.add_argument("--spark-slots", type=int, default=defaults.spark_slots,
                        help="local[N] task slots")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                        help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                        default=None, help="default: on for cuda, off for cpu")
    parser.add_argument("--optimize", default=defaults.optimize,
                        choices=["none", "freeze", "compile"],
                        help="the one-time optimisation of the hybrid_optimized pool")
    parser.add_argument("--small-jobs", type=int, default=defaults.small_jobs,
                        help="repeated small jobs per mode (fixed overhead)")
    parser.add_argument("--small-rows", type=int, default=defaults.small_rows)
    parser.add_argument("--sweep-sizes", default=defaults.sweep_sizes,
                        help="extra job sizes, comma separated ('' for none)")
    parser.add_argument("--sweep-partitions", default=defaults.sweep_partitions,
                        help="extra partition counts for the main job size ('' for none)")
    parser.add_argument("--full", action="store_true",
                        help="bigger sweeps: sizes 256,1024,4096 and partitions 2,8,32")
    parser.add_argument("--contenders", default=defaults.contenders,
                        help="comma separated subset of: " + ", ".join(CONTENDERS))
    parser.add_argument("--out", default=out_default,
                        help="where the JSON, Markdown and PNG go (default: %(default)s)")
    parser.add_argument("--workdir", default=defaults.workdir)
    parser.add_argument("--timeout", type=float, default=defaults.timeout,
                        help="seconds per contender: past it, the contender's whole "
                             "process group is killed and it is reported as timed out "
                             "(default: %(default)s)")
    return parser


def parse_args(argv=None, *, description: str | None = None,
               out_default: str = "bench_results") -> BenchConfig:
    parser = build_parser(description, out_default=out_default)
    config = BenchConfig(**vars(parser.parse_args(argv)))
    unknown = set(config.names) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}: choose from {list(CONTENDERS)}")
    return config


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
