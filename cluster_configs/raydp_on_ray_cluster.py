"""RayDP: Spark itself runs on an existing Ray cluster (executors are Ray actors),
beside the hybrid-infer pool, so one Ray cluster hosts both.

Run on any machine of the Ray cluster (e.g. after `ray attach` with
cluster_configs/ray-cluster-launcher-gpu.yaml), or submit it as a Ray job:

    ray job submit --address http://ray-head:8265 --working-dir . -- python cluster_configs/raydp_on_ray_cluster.py /data/images /data/predictions.parquet

RayDP 1.6.5 needs pyspark <= 3.5.7 and, on Java 17, the --add-opens flags in three
places (the RayDP app master, Spark's driver and executors, and Ray's Java workers),
all taken here from hybrid_infer.runtime.JAVA17_OPTIONS. A process that already
started a plain Spark JVM cannot start RayDP's Spark: run this in a fresh process.
"""

from __future__ import annotations

import sys

import ray
import raydp
from ray.job_config import JobConfig

from hybrid_infer import infer, read_images
from hybrid_infer.runtime import JAVA17_OPTIONS, JAVA17_OPTIONS_STR, NAMESPACE


def main(input_path: str, output_path: str, num_executors: int = 2) -> None:
    ray.init(address="auto", namespace=NAMESPACE,
             job_config=JobConfig(jvm_options=JAVA17_OPTIONS))
    spark = raydp.init_spark(
        app_name="hybrid-infer-raydp",
        num_executors=num_executors,
        executor_cores=2,
        executor_memory="4GB",
        configs={
            "spark.ray.raydp_app_master.extraJavaOptions": JAVA17_OPTIONS_STR,
            "spark.driver.extraJavaOptions": JAVA17_OPTIONS_STR,
            "spark.executor.extraJavaOptions": JAVA17_OPTIONS_STR,
            "spark.sql.execution.arrow.pyspark.enabled": "true",
        },
    )
    try:
        # Spark-on-Ray executors stream to the pool on the same Ray cluster.
        gcs_address = ray.get_runtime_context().gcs_address
        predictions = infer(read_images(spark, input_path), "resnet50",
                            ray_address=gcs_address, top_k=5)
        predictions.write.mode("overwrite").parquet(output_path)
    finally:
        raydp.stop_spark()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
