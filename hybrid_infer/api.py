"""`infer()`: DataFrame in, DataFrame out, in any mode."""

from __future__ import annotations

from hybrid_infer.decode import Preprocess
from hybrid_infer.errors import ConfigurationError, InputError
from hybrid_infer.models import model_spec, warn_if_random
from hybrid_infer.actor.inference import RequestOptions
from hybrid_infer.pool.settings import PoolSettings

MODES = ("hybrid", "raydp", "udf")


def infer(df, model="resnet18", *, weights: str | None = None, seed: int = 0,
          mode: str = "hybrid", input_col: str | None = None,
          id_cols: list[str] | None = None, top_k: int = 0,
          preprocess: Preprocess | None = None, pool: PoolSettings | None = None,
          batch_size: int | None = None, ray_address: str | None = None,
          rows_per_batch: int = 64, loader_workers: int = 0,
          allow_pickle: bool = False, input_shape: tuple[int, ...] | None = None,
          class_names=None, fail_fast: bool = False):
    """Run an image model over `df` and return DataFrame(id_cols..., prediction, error).

    model: a model spec (hybrid_infer.models), a torchvision name, "pkg.module:factory",
    a TorchScript (.pt) or torch.export (.pt2) file, or an MLflow URI (models:/name/1).
    weights (names and factories): None, "DEFAULT" or a torchvision weight name
    ("IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2"): pretrained weights, fetched once
    on the driver into torch's hub cache, with their class names and transforms as the
    defaults of class_names and preprocess; a local state_dict file; or "random" (seeded,
    warned about on every job). A factory without weights gets random ones.
    input_col: the binary column (default: "content", or the only binary column).
    id_cols: columns carried through to identify rows (default: every other column).
    mode: "hybrid" (the warm Ray actor pool; Ray is joined at `ray_address`, or
    started locally when none is running), "raydp" (Spark on Ray: df must come from
    runtime.start_raydp_spark; Ray Data feeds the same warm pool) or "udf" (the
    pandas-UDF baseline).
    batch_size overrides pool.batch_size, the model's batch size.
    class_names: one name per class (a list, or a text file with one per line) so that
    top_k results carry labels; default: the model spec's class_names, if any.
    input_shape: for non-image inputs: input_col holds numeric arrays (e.g. array<float>),
    each reshaped to this shape and passed to the model without decoding.
    Every input row comes back exactly once; `error` holds the reason when it failed.
    fail_fast: instead, the first failed row stops the job with its id and reason.
    """
    if mode not in MODES:
        raise ConfigurationError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    spec = model_spec(model, weights=weights, seed=seed, allow_pickle=allow_pickle)
    warn_if_random(spec)
    settings = pool or PoolSettings()
    if batch_size is not None:
        settings = PoolSettings(**{**settings.__dict__, "batch_size": batch_size})
    if input_shape is not None:
        if not input_col:
            raise InputError("input_shape is for numeric array columns: pass input_col= too")
        input_shape = tuple(int(n) for n in input_shape)
    input_col = input_col or _default_input_col(df)
    id_cols = _resolve_id_cols(df, input_col, id_cols, binary=input_shape is None)
    options = RequestOptions(preprocess=preprocess or default_preprocess(spec), top_k=top_k,
                             input_shape=input_shape,
                             class_names=_class_names(class_names, spec))

    if mode == "udf":
        from hybrid_infer.modes.udf import run_udf

        result = run_udf(df, spec=spec, input_col=input_col, id_cols=id_cols,
                         options=options, batch_size=settings.batch_size,
                         loader_workers=loader_workers,
                         embedding_layer=settings.embedding_layer)
    else:
        from hybrid_infer.pool.registry import Pool
        from hybrid_infer.runtime import connect_ray

        gcs_address, _ = connect_ray(ray_address)
        warm_pool = Pool.get_or_create(spec, settings)
        stream = dict(pool=warm_pool, input_col=input_col, id_cols=id_cols, options=options,
                      rows_per_batch=rows_per_batch, max_in_flight=settings.max_in_flight,
                      timeout_s=settings.batch_timeout_s)
        if mode == "raydp":
            from hybrid_infer.modes.raydp import run_raydp

            result = run_raydp(df, **stream)
        else:
            from hybrid_infer.modes.hybrid import run_hybrid

            result = run_hybrid(df, ray_address=gcs_address, **stream)
    return _stop_on_first_error(result, id_cols) if fail_fast else result


#: Prefix of the message a fail-fast job stops with (job.py finds it in Spark's error).
FAIL_FAST_MESSAGE = "bad record (fail_fast)"


def _stop_on_first_error(result, id_cols: list[str]):
    """Make a row with an `error` raise in its Spark task, naming the row and the reason."""
    from pyspark.sql import functions as F

    from hybrid_infer.output import ERROR

    row_id = F.concat_ws(", ", *[F.concat(F.lit(f"{name}="), F.col(name).cast("string"))
                                 for name in id_cols]) if id_cols else F.lit("?")
    message = F.concat(F.lit(f"{FAIL_FAST_MESSAGE}: row "), row_id, F.lit(": "), F.col(ERROR))
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
