"""hybrid_infer: deep-learning batch inference over Spark DataFrames on warm Ray actors.

    from hybrid_infer import infer, start_runtime, read_images
    with start_runtime() as rt:
        out = infer(read_images(rt.spark, "images/"), model="resnet18", mode="hybrid")
        out.write.parquet("predictions.parquet")
"""

from __future__ import annotations

import importlib

# Names load on first use (PEP 562): a Ray actor or Spark worker that imports one
# submodule (e.g. hybrid_infer.actor.inference) must not pay for pyspark and pandas too.
_EXPORTS = {
    "MODES": "hybrid_infer.api", "infer": "hybrid_infer.api",
    "JobOptions": "hybrid_infer.api", "ModelSource": "hybrid_infer.api",
    "predict_batch_udf": "hybrid_infer.batch_udf",
    "Preprocess": "hybrid_infer.decode",
    "ConfigurationError": "hybrid_infer.errors", "HybridInferError": "hybrid_infer.errors",
    "InputError": "hybrid_infer.errors", "ModelError": "hybrid_infer.errors",
    "OutputError": "hybrid_infer.errors",
    "PoolError": "hybrid_infer.errors", "PoolTimeoutError": "hybrid_infer.errors",
    "engine_errors": "hybrid_infer.errors",
    "ModelSpec": "hybrid_infer.models",
    "Pool": "hybrid_infer.pool.registry",
    "PoolSettings": "hybrid_infer.pool.settings", "ActorSettings": "hybrid_infer.pool.settings",
    "PlacementSettings": "hybrid_infer.pool.settings",
    "ClientSettings": "hybrid_infer.pool.settings",
    "Runtime": "hybrid_infer.runtime", "start_runtime": "hybrid_infer.runtime",
    "read_images": "hybrid_infer.sources", "read_input": "hybrid_infer.sources",
    "read_parquet": "hybrid_infer.sources",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hybrid_infer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"
