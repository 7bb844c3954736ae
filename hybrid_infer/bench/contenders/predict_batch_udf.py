"""predict_batch_udf: PySpark's own pyspark.ml.functions.predict_batch_udf, the model
built in make_predict_fn (once per Spark Python worker), one torch thread per slot."""

from __future__ import annotations

import numpy as np

from hybrid_infer.bench.config import ContenderConfig
from hybrid_infer.bench.contenders.common import (LOAD, make_runner, run_spark_jobs,
                                                  spark_session, stamp, stamps)
from hybrid_infer.models import ModelSpec


def run(config: ContenderConfig) -> dict:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType

    spark = spark_session(config)
    spec = ModelSpec(config.model, seed=config.seed, weights="random")
    stamp_dir = config.stamp_dir
    # tuned: the threads split across task slots; else torch's default, as users run it
    threads = max(1, config.threads // config.spark_slots) if config.threads else None

    def make_predict_fn():
        import torch

        from hybrid_infer.decode import ImageDecoder

        stamp(stamp_dir, LOAD)
        runner = make_runner(config, spec.load_module(), threads=threads)
        decoder = ImageDecoder()

        def predict(inputs: np.ndarray) -> np.ndarray:
            return runner([decoder(bytes(value)) for value in inputs])

        assert threads is None or torch.get_num_threads() == threads
        return predict

    classify = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()),
                                 batch_size=config.batch_size)

    def build(df):
        return df.select("path", classify("content").alias("prediction"))

    log = run_spark_jobs(config, spark, build, lambda: len(stamps(stamp_dir, LOAD)))
    spark.stop()
    return {"jobs": log.jobs, "threads_per_task": threads or "torch default"}
