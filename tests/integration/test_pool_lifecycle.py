"""Issue 14: a pool lives as long as the jobs that need it.

Jobs hold leases on their pool (the plan's, each task's over Flight); an idle pool
scales to zero and keeps its manager; work scales it back up; sizes are validated.
Real Spark, real Ray, real (random-weight) models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from hybrid_infer import infer
from hybrid_infer.errors import PoolError, from_spark
from hybrid_infer.models import ModelSpec
from hybrid_infer.pool.registry import Pool
from hybrid_infer.pool.settings import PoolSettings

from predictions import TEST_BATCH, TEST_MODEL, assert_matches
from runtime_env import RAY_ENV

CLI = [sys.executable, "-m", "hybrid_infer.cli", "pool"]


def small(**changes) -> PoolSettings:
    """A one-actor pool; each test's decode_threads gives it a key no other pool has."""
    return PoolSettings(**{"num_actors": 1, "batch_size": TEST_BATCH, "torch_threads": 1,
                           "num_cpus_per_actor": 0.5, "decode_threads": 1, **changes})


def wait_for(condition, what: str, timeout_s: float = 120.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def pool_cli(ray_address, *args, timeout=180):
    return subprocess.run(CLI + list(args) + ["--ray-address", ray_address], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **RAY_ENV})


def slow_start(seconds: float):
    """A partition function that waits before its first batch (a slow upstream)."""
    def partition(batches):
        import time as clock

        clock.sleep(seconds)
        yield from batches
    return partition


def test_a_job_that_starts_slowly_holds_a_lease_and_completes(images_df, expected, ray_address,
                                                              stop_new_pools):
    # idle_timeout_s=2, no lease for the plan: only the tasks' own leases hold the pool
    # while their upstream sleeps longer than the idle timeout.
    settings = small(idle_timeout_s=2, plan_lease_s=0)
    spec = ModelSpec(TEST_MODEL, weights="random")
    slow = images_df.mapInArrow(slow_start(6), images_df.schema)
    rows, failures = [], []

    def run():
        try:
            rows.extend(infer(slow, spec, pool=settings, ray_address=ray_address).collect())
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    pool = Pool.get_or_create(spec, settings)  # infer() finds it (scaled down or not)
    job = threading.Thread(target=run)
    job.start()
    most_leases = 0
    while job.is_alive():
        most_leases = max(most_leases, pool.describe()["leases"])
        time.sleep(0.2)
    job.join()
    assert not failures, from_spark(failures[0]) or failures[0]
    assert_matches(rows, expected)  # every row exactly once
    assert most_leases >= 1, "no task held a lease while its upstream was slow"



def test_a_plan_run_after_its_pool_scaled_to_zero_completes(images_df, expected, ray_address,
                                                            stop_new_pools):
    settings = small(idle_timeout_s=1, plan_lease_s=0, decode_threads=3)
    spec = ModelSpec(TEST_MODEL, weights="random")
    plan = infer(images_df, spec, pool=settings, ray_address=ray_address)  # lazy
    pool = Pool.get_or_create(spec, settings)
    wait_for(lambda: not pool.actors(), "the idle pool scales to zero")
    assert pool.name in Pool.names()  # the manager stays: the pool's entry point
    assert pool.status()["actors"] == [] and pool.status()["weights_bytes"] > 0

    started = time.perf_counter()
    rows = plan.collect()
    print(f"scale-up from zero and the job: {time.perf_counter() - started:.1f} s")
    assert_matches(rows, expected)  # every row exactly once


def test_scale_to_zero_then_a_job_scales_the_pool_back_up(images_df, ray_address,
                                                          stop_new_pools):
    settings = small(max_actors=1, decode_threads=4)
    spec = ModelSpec("mobilenet_v3_small", seed=21, weights="random")
    pool = Pool.get_or_create(spec, settings)

    scaled = pool_cli(ray_address, "scale", "--name", pool.name, "--num-actors", "0", "--json")
    assert scaled.returncode == 0, scaled.stderr[-3000:]
    assert json.loads(scaled.stdout) == {"name": pool.name, "actors": 0}
    assert pool.actors() == [] and pool.status()["placement"]["num_actors"] == 1

    plan = infer(images_df, spec, pool=settings, ray_address=ray_address)
    assert pool.describe()["leases"] >= 1  # the plan's: the job has arrived
    rows = plan.collect()
    assert len(rows) == images_df.count() and all(row["error"] is None for row in rows)
    assert len(pool.actors()) == 1  # back to num_actors (no idle scale-down: 3600 s)

    # sizes: a usage error, from the API (ValueError) and the CLI (exit 2, one line)
    for size in (-1, 2):  # 2 is over this pool's max_actors
        with pytest.raises(ValueError, match="pass 0 to free every actor|max_actors"):
            pool.scale(size)
        refused = pool_cli(ray_address, "scale", "--name", pool.name, "--num-actors", str(size))
        assert refused.returncode == 2, (refused.returncode, refused.stderr[-3000:])
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith("hybrid-infer: error: ") and "Traceback" not in refused.stderr
    assert len(pool.actors()) == 1  # nothing changed


def test_a_plan_run_after_an_explicit_stop_says_to_run_infer_again(images_df, ray_address,
                                                                   stop_new_pools):
    settings = small(decode_threads=5)
    spec = ModelSpec("mobilenet_v3_small", seed=22, weights="random")
    plan = infer(images_df, spec, pool=settings, ray_address=ray_address)
    Pool.get_or_create(spec, settings).stop()
    with pytest.raises(Exception) as caught:
        plan.collect()
    error = from_spark(caught.value)
    assert isinstance(error, PoolError), str(caught.value)[-3000:]
    assert "stopped" in str(error) and "calling infer() again" in str(error), str(error)


def test_an_idle_pool_keeps_min_actors_and_pool_start_warms_it_again(ray_address):
    start = ["start", "--json", "--model", "mobilenet_v3_small", "--seed", "23", "--weights",
             "random", "--num-actors", "2", "--min-actors", "1", "--max-actors", "2",
             "--idle-timeout", "2", "--torch-threads", "1"]
    started = pool_cli(ray_address, *start)
    assert started.returncode == 0, started.stderr[-3000:]
    report = json.loads(started.stdout)
    assert len(report["actors"]) == 2
    assert (report["placement"]["min_actors"], report["placement"]["max_actors"]) == (1, 2)
    pool = Pool.get(report["name"])
    try:
        wait_for(lambda: len(pool.actors()) == 1, "the idle pool scales down to min_actors")
        time.sleep(3)  # past another idle timeout: min_actors is a floor
        assert len(pool.actors()) == 1
        again = pool_cli(ray_address, *start)  # the same pool, back to num_actors
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout)["name"] == pool.name
        assert len(json.loads(again.stdout)["actors"]) == 2
    finally:
        pool.stop()
