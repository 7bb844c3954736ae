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
_EXPORTED_BY_MODULE = {
    "hybrid_infer.api": ("MODES", "infer", "JobOptions", "ModelSource"),
    "hybrid_infer.batch_udf": ("predict_batch_udf",),
    "hybrid_infer.decode": ("Preprocess",),
    "hybrid_infer.errors": ("ConfigurationError", "HybridInferError", "InputError",
                            "ModelError", "OutputError", "PoolError", "PoolRequestError",
                            "PoolTimeoutError", "engine_errors"),
    "hybrid_infer.models": ("ModelSpec",),
    "hybrid_infer.pool.registry": ("Pool",),
    "hybrid_infer.pool.settings": ("PoolSettings", "ActorSettings", "PlacementSettings",
                                   "ClientSettings"),
    "hybrid_infer.runtime": ("Runtime", "start_runtime"),
    "hybrid_infer.sources": ("read_images", "read_input", "read_parquet"),
}
_EXPORTS = {name: module for module, names in _EXPORTED_BY_MODULE.items() for name in names}


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
