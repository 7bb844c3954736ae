"""Helpers every contender shares: event stamps, job logs, cached Spark frames, the
engine's forward pass, and starting Spark (plain, or RayDP's on a local Ray)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from hybrid_infer.bench.config import ContenderConfig
from hybrid_infer.models import ModelSpec

LOAD = "load"


def stamp(directory: str, kind: str) -> None:
    """Record an event (a model load, a first result) as a file: works from any process."""
    name = f"{kind}-{os.getpid()}-{time.time_ns()}"
    with open(os.path.join(directory, name), "w") as handle:
        handle.write(repr(time.time()))


def stamps(directory: str, kind: str) -> list[float]:
    prefix = kind + "-"
    return [float(open(os.path.join(directory, n)).read())
            for n in os.listdir(directory) if n.startswith(prefix)]


def image_paths(image_dir: str, rows: int) -> list[str]:
    names = sorted(n for n in os.listdir(image_dir) if n.endswith(".jpg"))
    if rows > len(names):
        raise SystemExit(f"{image_dir} holds {len(names)} images, a job asks for {rows}")
    return [os.path.join(image_dir, n) for n in names[:rows]]


def local_path(uri: str) -> str:
    return uri[len("file:"):] if uri.startswith("file:") else uri


def make_runner(config: ContenderConfig, module, optimize: str | None = None, threads: int | None = None):
    """The engine's forward pass (placement, precision, channels_last) for any contender."""
    import torch

    from hybrid_infer.actor.runner import ModelRunner

    if threads or config.threads:  # else torch's own default, as a user's code gets
        torch.set_num_threads(threads or config.threads)
    return ModelRunner(module, device=config.device, precision=config.precision,
                       channels_last=config.channels_last, optimize=optimize or "none",
                       example_shape=(config.batch_size, 3, 224, 224))


@dataclass(frozen=True)
class CountingSpec(ModelSpec):
    """A ModelSpec that stamps each module build outside the driver (the udf recipe's
    model loads happen inside its UDF, which the benchmark cannot otherwise see)."""

    stamp_dir: str = ""
    driver_pid: int = 0

    def build_module(self, *, on_meta: bool = False):
        if os.getpid() != self.driver_pid:
            stamp(self.stamp_dir, LOAD)
        return super().build_module(on_meta=on_meta)


class JobLog:
    """Runs of each job: wall time, time to first result, model loads."""

    def __init__(self, stamp_dir: str):
        self.stamp_dir = stamp_dir
        self.jobs: list[dict] = []
        self._counter = 0

    def first_kind(self) -> str:
        self._counter += 1
        return f"first{self._counter}"

    def record(self, job: dict, started: float, finished: float, first_kind: str | None,
               first_at: float | None = None, model_loads: int | None = None) -> dict:
        if first_at is None and first_kind is not None:
            times = stamps(self.stamp_dir, first_kind)
            first_at = min(times) if times else None
        run = {"wall_s": round(finished - started, 4),
               "first_result_s": None if first_at is None else round(first_at - started, 4),
               "model_loads": model_loads}
        entry = next((j for j in self.jobs if j["label"] == job["label"]), None)
        if entry is None:
            entry = {**job, "runs": []}
            self.jobs.append(entry)
        entry["runs"].append(run)
        print(f"[{job['label']}] rows={job['rows']} partitions={job['partitions']} "
              f"wall={run['wall_s']:.2f}s first={run['first_result_s']} "
              f"loads={model_loads}", flush=True)
        return run


def save_logits(work_dir: str, paths: list[str], logits: np.ndarray) -> None:
    order = np.argsort(paths)
    np.savez(os.path.join(work_dir, "logits.npz"), paths=np.array(paths)[order],
             logits=np.asarray(logits, dtype=np.float32)[order])


def repetitions(job: dict) -> int:
    return job.get("warmup", 0) + job.get("repeat", 1)

class SparkData:
    """Cached DataFrames (path, content) of the first `rows` images in `partitions` parts,
    built before any timing so that every mode measures inference, not file listing."""

    def __init__(self, spark, image_dir: str):
        from hybrid_infer.sources import read_images

        self.spark = spark
        self.image_dir = image_dir
        self._all = read_images(spark, image_dir).cache()
        self._uris = sorted(r["path"] for r in self._all.select("path").collect())
        self._frames: dict = {}

    def frame(self, rows: int, partitions: int):
        from pyspark.sql import functions as F

        key = (rows, partitions)
        if key not in self._frames:
            wanted = self._uris[:rows]
            df = self._all.where(F.col("path").isin(wanted)).repartition(partitions).cache()
            if df.count() != rows:
                raise SystemExit(f"expected {rows} rows, got {df.count()}")
            self._frames[key] = df
        return self._frames[key]


def with_first_result_stamp(df, stamp_dir: str, kind: str):
    """Pass rows through unchanged, stamping when a task sees its first result batch."""
    def passthrough(batches):
        first = True
        for batch in batches:
            if first and batch.num_rows:
                stamp(stamp_dir, kind)
                first = False
            yield batch

    return df.mapInArrow(passthrough, df.schema)


def collect_predictions(df) -> tuple[list[str], np.ndarray]:
    pdf = df.select("path", "prediction").toPandas()
    logits = np.stack([np.asarray(v, dtype=np.float32) for v in pdf["prediction"]])
    return [local_path(p) for p in pdf["path"]], logits


def run_spark_jobs(config: ContenderConfig, spark, build_result_df, loads_now) -> JobLog:
    """Run every job of the config through `build_result_df(df) -> DataFrame`."""
    data = SparkData(spark, config.image_dir)
    for job in config.jobs:
        data.frame(job["rows"], job["partitions"])
    log = JobLog(config.stamp_dir)
    for job in config.jobs:
        for index in range(repetitions(job)):
            df = data.frame(job["rows"], job["partitions"])
            kind = log.first_kind()
            loads_before = loads_now()
            started = time.time()
            paths, logits = collect_predictions(
                with_first_result_stamp(build_result_df(df), config.stamp_dir, kind))
            finished = time.time()
            if index < job.get("warmup", 0):
                print(f"[{job['label']}] warm-up run {finished - started:.2f}s", flush=True)
                continue
            log.record(job, started, finished, kind, model_loads=loads_now() - loads_before)
            if job.get("keep"):
                save_logits(config.work_dir, paths, logits)
    return log


def spark_session(config: ContenderConfig):
    from hybrid_infer.runtime import start_spark

    spark, _ = start_spark(f"local[{config.spark_slots}]",
                           extra_conf={"spark.python.worker.reuse": "true"})
    return spark

def raydp_spark(config: ContenderConfig, app_name: str, *, executor_cores: int):
    """A local Ray head and RayDP's Spark on it, started the way the engine starts them
    (loopback, Java 17 flags for Ray's Java workers and every JVM, this interpreter)."""
    import ray

    from hybrid_infer.runtime import connect_ray, start_raydp_spark

    connect_ray(None, num_cpus=config.ray_cpus,
                object_store_memory=config.object_store_bytes)
    ray.data.DataContext.get_current().enable_progress_bars = False
    spark = start_raydp_spark(app_name, num_executors=1, executor_cores=executor_cores,
                              executor_memory="1G")
    spark.sparkContext.setLogLevel("ERROR")
    return spark
