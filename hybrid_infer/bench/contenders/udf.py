"""udf: hybrid_infer.modes.udf, the seed pandas-UDF recipe (the baseline); the model is
built inside each UDF call, which CountingSpec stamps."""

from __future__ import annotations

import os

from hybrid_infer.bench.config import ContenderConfig
from hybrid_infer.bench.contenders.common import (LOAD, CountingSpec, run_spark_jobs,
                                                  spark_session, stamps)


def run(config: ContenderConfig) -> dict:
    from hybrid_infer.decode import Preprocess
    from hybrid_infer.modes.udf import run_udf
    from hybrid_infer.transport.protocol import RequestOptions
    from hybrid_infer.pool.settings import ActorSettings

    spark = spark_session(config)
    spec = CountingSpec(config.model, seed=config.seed, stamp_dir=config.stamp_dir,
                        driver_pid=os.getpid())
    options = RequestOptions(preprocess=Preprocess())

    def build(df):
        return run_udf(df, spec=spec, input_col="content", id_cols=["path"], options=options,
                       actor=ActorSettings(batch_size=config.batch_size, device=config.device))

    log = run_spark_jobs(config, spark, build, lambda: len(stamps(config.stamp_dir, LOAD)))
    spark.stop()
    return {"jobs": log.jobs}
