"""`infer()`: DataFrame in, DataFrame out, in any mode.

Its settings come in three groups, one type each:
- where the model comes from: `model` (a spec, or a string resolved with ModelSource);
- what this job asks of each row: JobOptions (columns, top-k, preprocessing...);
- the pool: PoolSettings (what actors compute, how the pool is placed, how this job's
  tasks talk to it).
Any field of the three may also be passed as a keyword: `infer(df, m, top_k=5,
batch_size=16)` is `infer(df, m, job=JobOptions(top_k=5), pool=PoolSettings(batch_size=16))`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from hybrid_infer.decode import Preprocess
from hybrid_infer.errors import ConfigurationError, InputError
from hybrid_infer.models import model_spec, warn_if_random
from hybrid_infer.pool.settings import PARTS, PoolSettings, route_fields
from hybrid_infer.row_limits import (DEFAULT_MAX_ROW_BYTES, REFUSAL_COL, check_limit,
                                     merge_refusals, refuse_oversized)
from hybrid_infer.transport.protocol import RequestOptions

MODES = ("hybrid", "raydp", "udf")


@dataclass(frozen=True)
class ModelSource:
    """How a model named by a string is loaded (a spec object carries its own).

    weights (names and factories): None, "DEFAULT" or a torchvision weight name
    ("IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2"): pretrained weights, fetched once
    on the driver into torch's hub cache, with their class names and transforms as the
    defaults of class_names and preprocess; a local state_dict file; or "random" (seeded,
    warned about on every job). A factory without weights gets random ones.
    allow_pickle: load pickled model files (trusted files only: they can run code).
    """

    weights: str | None = None
    seed: int = 0
    allow_pickle: bool = False


@dataclass(frozen=True)
class JobOptions:
    """What one job asks for each row; nothing here changes the pool.

    input_col: the binary column (default: "content", or the only binary column).
    id_cols: columns carried through to identify rows (default: every other column).
    top_k: also return the top-k classes (indices, scores, and labels with class names).
    preprocess: decoding and transform (default: torchvision's ImageNet transform).
    input_shape: for non-image inputs: input_col holds numeric arrays (e.g.
    array<float>), each reshaped to this shape and passed to the model without decoding.
    class_names: one name per class (a list, or a text file with one per line) so that
    top_k results carry labels; default: the model spec's class_names, if any.
    fail_fast: the first failed row stops the job with its id and reason (default:
    every input row comes back exactly once, `error` holding the reason it failed).
    loader_workers: DataLoader workers per UDF call (mode="udf" only).
    job_id: a name unique to this job: the pool's actors count the rows they answer
    under it, which is how a progress line (hybrid_infer.progress) follows one job on
    a warm pool that other jobs share (hybrid and raydp modes; None: not counted).
    max_row_bytes: a value larger than this many bytes (default 64 MiB; see
    row_limits.DEFAULT_MAX_ROW_BYTES for why) is refused in Spark's JVM, before it
    reaches Arrow, Python or the pool: its row comes back with "value too large: ..."
    as its error (numeric arrays count 1-8 bytes per element).
    """

    input_col: str | None = None
    id_cols: list[str] | None = None
    top_k: int = 0
    preprocess: Preprocess | None = None
    input_shape: tuple[int, ...] | None = None
    class_names: object = None
    fail_fast: bool = False
    loader_workers: int = 0
    job_id: str | None = None
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES

    def __post_init__(self):
        object.__setattr__(self, "max_row_bytes", check_limit(self.max_row_bytes))
        if self.top_k < 0:
            raise ConfigurationError(f"top_k must be >= 0, got {self.top_k}")
        if self.input_shape is not None:
            if not self.input_col:
                raise InputError("input_shape is for numeric array columns: pass input_col= too")
            object.__setattr__(self, "input_shape", tuple(int(n) for n in self.input_shape))


#: The keyword shorthands of infer(), by the group that owns them (the pool's three parts).
_GROUPS = {"model": ModelSource, "job": JobOptions, **PARTS}


def _settings(job: JobOptions | None, pool: PoolSettings | None,
              keywords: dict) -> tuple[ModelSource, JobOptions, PoolSettings]:
    """The one place an entry point's keyword settings are routed: each keyword to the
    group that owns it, overriding that field of `job` or `pool`."""
    given = route_fields(keywords, _GROUPS, "infer()")
    job = replace(job or JobOptions(), **given["job"])
    pool = (pool or PoolSettings()).with_parts({part: given[part] for part in PARTS})
    return ModelSource(**given["model"]), job, pool


def infer(df, model="resnet18", *, mode: str = "hybrid", job: JobOptions | None = None,
          pool: PoolSettings | None = None, ray_address: str | None = None, **settings):
    """Run a model over `df` and return DataFrame(id_cols..., prediction, error[, top_k]).

    model: a model spec (hybrid_infer.models), a torchvision name, "pkg.module:factory",
    a TorchScript (.pt) or torch.export (.pt2) file, or an MLflow URI (models:/name/1).
    mode: "hybrid" (the warm Ray actor pool; Ray is joined at `ray_address`, or
    started locally when none is running), "raydp" (Spark on Ray: df must come from
    runtime.start_raydp_spark; Ray Data feeds the same warm pool) or "udf" (the
    pandas-UDF baseline: honours batch_size, device, precision, torch_threads and
    embedding_layer; refuses optimize; the pool's throughput settings do not apply).
    job: JobOptions; pool: PoolSettings.
    settings: any field of ModelSource (weights, seed, allow_pickle), JobOptions or
    PoolSettings by name; it overrides the same field of `job` or `pool`.
    """
    if mode not in MODES:
        raise ConfigurationError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    source, job, pool = _settings(job, pool, settings)
    if mode == "udf":
        from hybrid_infer.modes.udf import check_udf_settings

        check_udf_settings(pool.actor)  # before any work: a setting it cannot honour
    elif mode == "raydp":
        from hybrid_infer.modes.raydp import check_raydp_session

        check_raydp_session(df.sparkSession)  # before any work: RayDP, Spark 3.5, its session
    spec = model_spec(model, **asdict(source))
    warn_if_random(spec)
    input_col = job.input_col or _default_input_col(df)
    id_cols = _resolve_id_cols(df, input_col, job.id_cols, binary=job.input_shape is None)
    options = RequestOptions(preprocess=job.preprocess or default_preprocess(spec), top_k=job.top_k,
                             input_shape=job.input_shape,
                             class_names=_class_names(job.class_names, spec),
                             batch_timeout_s=pool.client.batch_timeout_s, job_id=job.job_id)
    # Checked in the JVM before any mode copies a value into Arrow (every mode below).
    df = refuse_oversized(df, input_col, job.max_row_bytes)
    carried = id_cols + [REFUSAL_COL]  # a refused row's reason travels with its ids

    if mode == "udf":
        from hybrid_infer.modes.udf import run_udf

        result = run_udf(df, spec=spec, input_col=input_col, id_cols=carried,
                         options=options, actor=pool.actor,
                         loader_workers=job.loader_workers)
    else:
        from hybrid_infer.pool.registry import Pool
        from hybrid_infer.runtime import connect_ray

        connect_ray(ray_address)  # the driver joins Ray; its tasks only speak Flight
        client = pool.client  # this job's, whoever started the pool
        running = Pool.get_or_create(spec, pool)
        # Hold the pool for the plan's first tasks (each then holds its own lease); a
        # plan run after this lease ended finds the pool scaled down, and it scales up.
        running.lease(client.plan_lease_s)
        address = running.address()
        stream = dict(address=address, input_col=input_col, id_cols=carried, options=options,
                      rows_per_batch=client.rows_per_batch,
                      max_in_flight=client.max_in_flight, timeout_s=client.batch_timeout_s,
                      max_row_bytes=job.max_row_bytes)
        if mode == "raydp":
            from hybrid_infer.modes.raydp import run_raydp

            result = run_raydp(df, **stream)
        else:
            from hybrid_infer.modes.hybrid import run_hybrid

            result = run_hybrid(df, **stream)
    result = merge_refusals(result)
    return _stop_on_first_error(result, id_cols) if job.fail_fast else result


#: What a fail-fast job's error says first (after the error's type name).
FAIL_FAST_MESSAGE = "bad record (fail_fast)"


def _stop_on_first_error(result, id_cols: list[str]):
    """Make a row with an `error` raise in its Spark task, naming the row and the reason.

    The message starts with InputError's type name, which errors.from_spark looks up.
    """
    from pyspark.sql import functions as F

    from hybrid_infer.output import ERROR

    row_id = F.concat_ws(", ", *[F.concat(F.lit(f"{name}="), F.col(name).cast("string"))
                                 for name in id_cols]) if id_cols else F.lit("?")
    message = F.concat(F.lit(f"{InputError.type_name()}: {FAIL_FAST_MESSAGE}: row "), row_id,
                       F.lit(": "), F.col(ERROR),
                       F.lit(". Fix or drop the row, or run without fail_fast to get it as "
                             "an error value"))
    return result.withColumn(
        ERROR, F.when(F.col(ERROR).isNotNull(), F.raise_error(message)).otherwise(F.col(ERROR)))


def default_preprocess(spec) -> Preprocess:
    """The model's own transform (pretrained torchvision weights carry one), else the
    engine's default."""
    return getattr(spec, "preprocess", None) or Preprocess()


def _class_names(class_names, spec) -> tuple[str, ...] | None:
    if class_names is None:
        class_names = getattr(spec, "class_names", None)
    if isinstance(class_names, str):
        try:
            with open(class_names, encoding="utf-8") as handle:
                class_names = [line.rstrip("\n") for line in handle if line.strip()]
        except OSError as exc:
            raise InputError(f"cannot read class names from {class_names!r}: {exc}; pass a "
                             "text file with one class name per line, or a list") from None
    return tuple(str(name) for name in class_names) if class_names is not None else None


def _default_input_col(df) -> str:
    from pyspark.sql.types import BinaryType

    binary = [f.name for f in df.schema.fields if isinstance(f.dataType, BinaryType)]
    if "content" in binary:
        return "content"
    if len(binary) == 1:
        return binary[0]
    raise InputError(f"cannot tell which column holds the image bytes (binary columns: "
                     f"{binary or 'none'}): pass input_col=")


def _resolve_id_cols(df, input_col: str, id_cols: list[str] | None, *,
                     binary: bool = True) -> list[str]:
    from hybrid_infer.sources import check_binary_column

    if binary:
        check_binary_column(df, input_col)
    elif input_col not in df.columns:
        raise InputError(f"input column {input_col!r} not found; the input has {df.columns}")
    names = df.columns
    if id_cols is None:
        return [name for name in names if name != input_col]
    missing = [name for name in id_cols if name not in names]
    if missing:
        raise InputError(f"id column(s) {missing} not found; the input has {names}")
    return list(id_cols)
