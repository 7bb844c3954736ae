"""hybrid_third_model: hybrid's jobs in a session that already holds two idle pools of
other models, on the same embedded Ray. Its cold job times what a third model costs
when the cluster's slots are taken by idle pools (they give way: pool/pressure.py);
compare it with hybrid's cold job."""

from __future__ import annotations

from hybrid_infer.bench.config import ContenderConfig
from hybrid_infer.bench.contenders.common import spark_session
from hybrid_infer.bench.contenders.hybrid import run_pool_jobs

#: the two models whose pools are left idle before the timed jobs
OTHER_MODELS = ("mobilenet_v3_small", "squeezenet1_0")


def run(config: ContenderConfig) -> dict:
    from hybrid_infer.api import infer
    from hybrid_infer.runtime import connect_ray
    from hybrid_infer.sources import read_images

    gcs_address, _ = connect_ray(None, num_cpus=config.ray_cpus,
                                 object_store_memory=config.object_store_bytes)
    spark = spark_session(config)
    images = read_images(spark, config.image_dir).limit(16)
    for model in OTHER_MODELS:  # two pools, idle once their job is done
        infer(images, model, weights="random", ray_address=gcs_address).collect()
    return run_pool_jobs(config, spark, mode="hybrid", ray_address=gcs_address)
