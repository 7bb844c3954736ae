"""hybrid_infer: deep-learning batch inference over Spark DataFrames on warm Ray actors.

    from hybrid_infer import infer, start_runtime, read_images
    with start_runtime() as rt:
        out = infer(read_images(rt.spark, "images/"), model="resnet18", mode="hybrid")
        out.write.parquet("predictions.parquet")
"""

from hybrid_infer.api import MODES, infer
from hybrid_infer.batch_udf import predict_batch_udf
from hybrid_infer.decode import Preprocess
from hybrid_infer.errors import (ConfigurationError, HybridInferError, InputError,
                                 ModelError, PoolError)
from hybrid_infer.models import ModelSpec
from hybrid_infer.pool.registry import Pool
from hybrid_infer.pool.settings import PoolSettings
from hybrid_infer.runtime import Runtime, start_runtime
from hybrid_infer.sources import read_images, read_input, read_parquet

__all__ = [
    "MODES", "ConfigurationError", "HybridInferError", "InputError", "ModelError", "ModelSpec",
    "Pool", "PoolError", "PoolSettings", "Preprocess", "Runtime", "infer", "predict_batch_udf",
    "read_images", "read_input", "read_parquet", "start_runtime",
]
__version__ = "0.1.0"
