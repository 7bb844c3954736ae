"""raydp: hybrid_infer's raydp mode (Spark on Ray -> Ray Data -> the pool), cold then
warm like hybrid."""

from __future__ import annotations

from hybrid_infer.bench.config import ContenderConfig
from hybrid_infer.bench.contenders.common import raydp_spark
from hybrid_infer.bench.contenders.hybrid import run_pool_jobs


def run(config: ContenderConfig) -> dict:
    """hybrid_infer's raydp mode: Spark on Ray (RayDP) -> Ray Data -> the warm pool."""
    spark = raydp_spark(config, "bench-raydp", executor_cores=config.spark_slots)
    return run_pool_jobs(config, spark, mode="raydp", ray_address=None)
