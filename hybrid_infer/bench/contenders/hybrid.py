"""hybrid: hybrid_infer's hybrid mode on a local Ray head; the first job is cold (pool
start and model load timed), later ones warm. run_pool_jobs also serves raydp."""

from __future__ import annotations

from hybrid_infer.bench.config import ContenderConfig
from hybrid_infer.bench.contenders.common import run_spark_jobs, spark_session
from hybrid_infer.models import ModelSpec


def run(config: ContenderConfig) -> dict:
    from hybrid_infer.runtime import connect_ray

    gcs_address, _ = connect_ray(None, num_cpus=config.ray_cpus,
                                 object_store_memory=config.object_store_bytes)
    spark = spark_session(config)
    return run_pool_jobs(config, spark, mode="hybrid", ray_address=gcs_address)

def run_pool_jobs(config: ContenderConfig, spark, *, mode: str, ray_address: str | None) -> dict:
    """The jobs of `config` through hybrid_infer's `mode` on one pool: the first job
    starts the pool (cold: its start and model load are timed), later ones reuse it."""
    import ray

    from hybrid_infer.api import infer
    from hybrid_infer.pool.registry import Pool
    from hybrid_infer.pool.settings import PoolSettings

    spec = ModelSpec(config.model, seed=config.seed, weights="random")
    actors = config.actors
    # Untuned: the pool's own sizing rule (a CPU pool on its node's cores). Tuned
    # (--threads, --actors): the threads split between the actors, as for the others.
    tuned = {"torch_threads": max(1, config.threads // (actors or 1))} if config.threads else {}
    settings = PoolSettings(num_actors=actors, batch_size=config.batch_size,
                            device=config.device, precision=config.precision,
                            channels_last=config.channels_last,
                            optimize=config.optimize, streams=config.streams,
                            idle_timeout_s=0, **tuned)
    state = {"pool": None, "used": False}

    def loads_now() -> int:  # called outside the timed part of a job
        if not state["used"]:
            return 0
        state["pool"] = state["pool"] or Pool.get_or_create(spec, settings)
        return state["pool"].status()["model_loads"]

    def build(df):  # the pool is found or created inside infer(): cold cost is timed
        state["used"] = True
        return infer(df, spec, mode=mode, input_col="content", id_cols=["path"],
                     pool=settings, ray_address=ray_address)

    log = run_spark_jobs(config, spark, build, loads_now)
    status = state["pool"].status()
    state["pool"].stop()
    if mode == "raydp":
        import raydp

        raydp.stop_spark()
    else:
        spark.stop()
    ray.shutdown()
    actor = status["actors"][0]
    return {"jobs": log.jobs, "pool_load_s": actor["load_seconds"],
            "actors": len(status["actors"]), "torch_threads": actor["torch_threads"],
            "optimize_s": actor.get("optimize_seconds", 0.0), "optimize": config.optimize}
