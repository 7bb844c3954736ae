"""A driver program the cluster tests submit against their clusters, as a user would.

It runs in its own process because one Python process holds one SparkContext and one
Ray connection, and the test process already has the embedded ones. Each command
prints one JSON document on its last line of stdout.

  job     (under spark-submit) start the pool on the Ray cluster, run a hybrid job on
          the Spark cluster spark-submit chose, write Parquet, report where work ran
  inspect report the pool's actors: node, custom resources, weight storage
"""

from __future__ import annotations

import argparse
import json
import urllib.request

from actor_probes import first_param_location, probe, weight_storage
from predictions import TEST_BATCH, TEST_MODEL


def pool_settings(num_actors: int | None):
    from hybrid_infer.pool.settings import PoolSettings

    # Placed by the nodes' logical GPUs, as on GPU machines, but run on the CPU: these
    # GPUs are not real, and an actor holding a GPU with device "auto" would (rightly)
    # refuse to start when torch cannot use it.
    return PoolSettings(num_actors=num_actors, batch_size=TEST_BATCH, torch_threads=1,
                        device="cpu", num_gpus_per_actor=1)


def describe_actors(pool) -> list[dict]:
    """Each actor's status plus its node's custom resources and its weight storage."""
    import ray

    node_resources = {node["NodeID"]: sorted(k for k in node["Resources"]
                                             if k.startswith("node_"))
                      for node in ray.nodes() if node["Alive"]}
    actors = pool.actors()
    statuses = ray.get([actor.status.remote() for actor in actors])
    storages = probe(actors, weight_storage)
    locations = probe(actors, first_param_location)
    return [{**status, "node": node_resources[status["node_id"]], "storage": storage,
             "weights_at": location}
            for status, storage, location in zip(statuses, storages, locations)]


def spark_executors(sc) -> list[dict]:
    """Executors of this application with the tasks each completed (Spark's REST API)."""
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/executors"
    with urllib.request.urlopen(url, timeout=10) as response:
        return [{"id": e["id"], "host_port": e["hostPort"], "tasks": e["completedTasks"]}
                for e in json.load(response) if e["id"] != "driver"]


def cmd_job(args) -> dict:
    from hybrid_infer import infer, read_images, start_runtime
    from hybrid_infer.models import ModelSpec
    from hybrid_infer.pool.registry import Pool

    settings = pool_settings(args.num_actors)
    # no master given: the session is the one spark-submit set up (--master, --conf)
    with start_runtime(ray_address=args.ray_address) as runtime:
        pool = Pool.get_or_create(ModelSpec(TEST_MODEL, weights="random"), settings)
        df = read_images(runtime.spark, args.images).repartition(args.partitions)
        out = infer(df, TEST_MODEL, weights="random", pool=settings, ray_address=args.ray_address,
                    rows_per_batch=5)
        out.write.parquet(args.output)
        sc = runtime.spark.sparkContext
        return {"pool": pool.name, "master": sc.master, "app_id": sc.applicationId,
                "executors": spark_executors(sc),
                "actors": describe_actors(pool)}


def cmd_inspect(args) -> dict:
    from hybrid_infer.pool.registry import Pool
    from hybrid_infer.runtime import connect_ray

    connect_ray(args.ray_address)
    return {"actors": describe_actors(Pool.get(args.pool))}


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    job = commands.add_parser("job")
    job.add_argument("--images", required=True)
    job.add_argument("--output", required=True)
    job.add_argument("--num-actors", type=int, default=None)
    job.add_argument("--partitions", type=int, default=4)
    inspect = commands.add_parser("inspect")
    inspect.add_argument("--pool", required=True)
    for sub in (job, inspect):
        sub.add_argument("--ray-address", required=True)
    args = parser.parse_args()
    report = {"job": cmd_job, "inspect": cmd_inspect}[args.command](args)
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
