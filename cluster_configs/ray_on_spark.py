"""Ray on Spark: start the Ray cluster on an existing Spark cluster's executors
(Databricks, EMR, or any Spark standalone / YARN cluster), then run hybrid-infer on it.

Run it as the Spark application itself (a notebook cell or `spark-submit`):

    spark-submit --master spark://spark-master:7077 cluster_configs/ray_on_spark.py s3://bucket/images/ s3://bucket/predictions.parquet --model resnet50 --ray-nodes 4

`ray.util.spark.setup_ray_cluster` runs one Ray worker node per Spark task slot it
gets (a long-running barrier job holds those slots); the Ray head runs on the Spark
driver. The warm pool then lives on those Ray nodes, one object-store copy of the
weights per node, and the same Spark session streams its partitions to it. While the
Ray cluster is up, its slots are not available to other Spark jobs: size
--ray-nodes so that Spark keeps task slots for the inference job itself.

Needs `ray[client]` (grpcio): setup_ray_cluster always starts a Ray Client server.
tests/test_ray_on_spark.py runs this file on a local standalone cluster.

Databricks: use a cluster with the Databricks Runtime ML (Java 17 flags are set by
the runtime); `%pip install` the hybrid-infer wheel first. GPU clusters: each Ray
worker node gets the GPUs of the Spark task that hosts it, read from the application's
`spark.task.resource.gpu.amount` (set it, with Spark's GPU discovery, as for any GPU
job; `--gpus-per-node N` overrides it), and device="auto" puts one actor per GPU.
EMR: set the spark-defaults from cluster_configs/spark-defaults-for-ray.conf in the
cluster's configuration (classification "spark-defaults").
"""

from __future__ import annotations

import argparse
import json

from pyspark.sql import SparkSession
from ray.util.spark import setup_ray_cluster, shutdown_ray_cluster

from hybrid_infer import infer, read_images
from hybrid_infer.pool.registry import Pool
from hybrid_infer.pool.settings import PoolSettings
from hybrid_infer.runtime import spark_conf_for_java17


def gpus_per_ray_node(spark, override: int | None = None) -> int:
    """The GPUs each Ray worker node gets: those of the Spark task that hosts it."""
    if override is not None:
        return override
    return int(float(spark.conf.get("spark.task.resource.gpu.amount", "0")))


def dashboard_installed() -> bool:
    """Whether this Python has Ray's dashboard packages (`pip install "ray[default]"`)."""
    try:
        __import__("ray.dashboard.optional_deps")
    except ImportError:
        return False
    return True


def main(input_path: str, output_path: str, model: str, ray_nodes: int,
         gpus_per_node: int | None = None, weights: str | None = None) -> None:
    builder = SparkSession.builder.appName("hybrid-infer-ray-on-spark")
    for key, value in spark_conf_for_java17().items():  # no-op where already set
        builder = builder.config(key, value)
    spark = builder.getOrCreate()

    # The Ray head starts on this driver, the worker nodes inside Spark tasks.
    # Each Ray worker node holds one Spark task slot (spark.task.cpus cores) while up.
    ray_address, _ = setup_ray_cluster(
        max_worker_nodes=ray_nodes,
        min_worker_nodes=ray_nodes,
        num_cpus_worker_node=int(spark.conf.get("spark.task.cpus", "1")),
        num_gpus_worker_node=gpus_per_ray_node(spark, gpus_per_node),
        # without the dashboard's packages (ray[default]), setup_ray_cluster would wait
        # 60 s for a dashboard that never comes up
        head_node_options={"include_dashboard": dashboard_installed()},
    )
    try:
        # one actor per Ray node (per GPU with device="auto" on GPU nodes)
        settings = PoolSettings(num_actors=ray_nodes, device="auto", batch_size=32)
        predictions = infer(read_images(spark, input_path), model, weights=weights,
                            pool=settings,
                            ray_address=ray_address, top_k=5)
        predictions.write.mode("overwrite").parquet(output_path)
        print(json.dumps(where_it_ran(ray_address)))
        for name in Pool.names():               # the pool dies with this Ray cluster
            Pool.get(name).stop()
    finally:
        shutdown_ray_cluster()


def where_it_ran(ray_address: str) -> dict:
    """The Ray on Spark cluster, and on how many of its nodes the pool's actors ran."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    actor_nodes = set()
    for name in Pool.names():
        actor_nodes |= {a["node_id"] for a in Pool.get(name).status()["actors"]}
    return {"ray_address": ray_address, "ray_nodes": len(nodes),
            "actor_nodes": len(actor_nodes)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="hybrid-infer on Ray on Spark")
    parser.add_argument("input", help="image directory (binaryFile) to read")
    parser.add_argument("output", help="Parquet output path")
    parser.add_argument("--model", default="resnet50", help="torchvision model name")
    parser.add_argument("--weights", default=None,
                        help="torchvision weight name, state_dict file or 'random' "
                             "(default: the model's DEFAULT pretrained weights)")
    parser.add_argument("--ray-nodes", type=int, default=2, help="Ray worker nodes to start")
    parser.add_argument("--gpus-per-node", type=int, default=None,
                        help="GPUs per Ray worker node (default: the application's "
                             "spark.task.resource.gpu.amount, 0 without GPUs)")
    args = parser.parse_args()
    main(args.input, args.output, args.model, args.ray_nodes, args.gpus_per_node, args.weights)
