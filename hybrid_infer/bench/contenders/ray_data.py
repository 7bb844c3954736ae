"""ray_data: the way Ray's documentation does batch inference, fed from Spark by RayDP:
ray.data.from_spark -> decode tasks -> an actor pool of the model."""

from __future__ import annotations

import time

import numpy as np

from hybrid_infer.bench.config import ContenderConfig
from hybrid_infer.bench.contenders.common import (LOAD, JobLog, SparkData, local_path,
                                                  make_runner, raydp_spark, repetitions,
                                                  save_logits, stamp, stamps)
from hybrid_infer.models import ModelSpec


def run(config: ContenderConfig) -> dict:
    """The way Ray's documentation does batch inference, fed from Spark by RayDP.

    RayDP's Spark must be the first Spark JVM of this process (docs/api.md, Modes), and its JVMs
    need Java 17's --add-opens flags, passed to Ray's Java workers and to every JVM.
    """
    import ray
    import raydp

    spark = raydp_spark(config, "bench-ray-data", executor_cores=1)
    data = SparkData(spark, config.image_dir)
    for job in config.jobs:
        data.frame(job["rows"], job["partitions"])
    spec = ModelSpec(config.model, seed=config.seed, weights="random")
    stamp_dir = config.stamp_dir
    actors = config.actors or 1  # like the hybrid pool: the threads split among them

    def decode(batch: dict) -> dict:
        import torch

        from hybrid_infer.decode import ImageDecoder

        decoder = ImageDecoder()
        images = torch.stack([decoder(bytes(v)) for v in batch["content"]]).numpy()
        return {"path": batch["path"], "image": images}

    class Predictor:
        def __init__(self):
            stamp(stamp_dir, LOAD)
            self.runner = make_runner(config, spec.load_module(),
                                      threads=max(1, config.threads // actors)
                                      if config.threads else None)

        def __call__(self, batch: dict) -> dict:
            import torch

            logits = self.runner(list(torch.from_numpy(batch["image"])))
            return {"path": batch["path"], "prediction": logits}

    log = JobLog(stamp_dir)
    for job in config.jobs:
        for index in range(repetitions(job)):
            df = data.frame(job["rows"], job["partitions"])
            loads_before = len(stamps(stamp_dir, LOAD))
            started = time.time()
            first_at = None
            paths, logits = [], []
            ds = (ray.data.from_spark(df)
                  .map_batches(decode, batch_size=config.batch_size, batch_format="numpy")
                  .map_batches(Predictor, batch_size=config.batch_size,
                               batch_format="numpy", concurrency=actors, num_cpus=1,
                               num_gpus=1 if config.device == "cuda" else 0))
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                first_at = first_at or time.time()
                paths.extend(local_path(p) for p in batch["path"])
                logits.append(batch["prediction"])
            finished = time.time()
            if index < job.get("warmup", 0):
                print(f"[{job['label']}] warm-up run {finished - started:.2f}s", flush=True)
                continue
            log.record(job, started, finished, None, first_at=first_at,
                       model_loads=len(stamps(stamp_dir, LOAD)) - loads_before)
            if job.get("keep"):
                save_logits(config.work_dir, paths, np.concatenate(logits))
    raydp.stop_spark()
    ray.shutdown()
    return {"jobs": log.jobs}
