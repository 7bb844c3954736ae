"""Issue 3: the warm pool and the hybrid mode."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from hybrid_infer import infer
from hybrid_infer.errors import PoolError
from hybrid_infer.models import ModelSpec
from hybrid_infer.pool.registry import Pool
from hybrid_infer.pool.settings import PoolSettings

from predictions import TEST_BATCH, TEST_MODEL, assert_matches
from runtime_env import RAY_ENV


@pytest.fixture(scope="module")
def pool_settings():
    return PoolSettings(num_actors=2, batch_size=TEST_BATCH, torch_threads=1)


@pytest.fixture(scope="module")
def warm_pool(ray_address, pool_settings):
    pool = Pool.get_or_create(ModelSpec(TEST_MODEL, weights="random"), pool_settings)
    yield pool
    pool.stop()


@pytest.mark.parametrize("rows_per_batch", [3, 5, 13])
def test_hybrid_equals_direct_pytorch(images_df, expected, ray_address, warm_pool,
                                      pool_settings, rows_per_batch):
    # Arrow batch sizes that do not divide the model batch size (8), over 3 partitions.
    out = infer(images_df, TEST_MODEL, weights="random", mode="hybrid", pool=pool_settings,
                ray_address=ray_address, rows_per_batch=rows_per_batch)
    rows = out.collect()
    assert len(rows) == images_df.count()
    assert_matches(rows, expected)


def test_weights_live_once_in_the_object_store(warm_pool):
    from actor_probes import probe, weight_storage

    storages = probe(warm_pool.actors(), weight_storage)
    assert len(storages) == 2 and storages[0]["pid"] != storages[1]["pid"]
    for storage in storages:
        # every parameter byte sits in the shared-memory object store mapping, none in
        # the actor's private heap (a per-actor copy would be "<anonymous>" or [heap])
        backing = storage["backing"]
        assert list(backing.values()) == [storage["param_bytes"]], backing
        (mapping,) = backing
        assert mapping.startswith("/dev/shm/") or "plasma" in mapping, mapping
    assert storages[0]["backing"].keys() == storages[1]["backing"].keys()


def test_actors_run_at_the_drivers_priority_not_rays_worker_niceness(warm_pool):
    """Ray nices its workers to 15: an actor there would lose its CPU to every Spark task
    of its node (nice 0). The pool's workers keep nice 0, like Spark's."""
    import os

    from actor_probes import probe

    assert probe(warm_pool.actors(), lambda _: os.nice(0)) == [os.nice(0)] * 2


def test_actors_keep_freed_activations_in_the_heap(warm_pool):
    """glibc would mmap each forward pass's activations afresh (page faults and zeroed
    pages at every batch): the pool's workers raise its mmap and trim thresholds."""
    import os

    from actor_probes import probe

    from hybrid_infer.runtime import POOL_WORKER_ENV

    keys = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    seen = probe(warm_pool.actors(), lambda _: {k: os.environ.get(k) for k in keys})
    assert seen == [{k: POOL_WORKER_ENV[k] for k in keys}] * 2


SECOND_DRIVER = textwrap.dedent("""
    import json, sys
    from hybrid_infer import infer, read_images, start_runtime
    from hybrid_infer.pool.registry import Pool
    from hybrid_infer.pool.settings import PoolSettings
    address, images, pool_name = sys.argv[1:4]
    settings = PoolSettings(num_actors=2, batch_size=%d, torch_threads=1)
    with start_runtime(ray_address=address) as runtime:
        rows = infer(read_images(runtime.spark, images), "%s", weights="random", pool=settings,
                     ray_address=address).collect()
        status = Pool.get(pool_name).status()
        print("RESULT" + json.dumps({"rows": len(rows), "status": status}))
""" % (TEST_BATCH, TEST_MODEL))


def test_second_driver_process_reuses_the_warm_pool(ray_address, image_dir, warm_pool):
    before = warm_pool.status()
    result = subprocess.run([sys.executable, "-c", SECOND_DRIVER, ray_address, image_dir,
                             warm_pool.name],
                            capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, **RAY_ENV})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("RESULT", 1)[1])
    after = report["status"]
    assert report["rows"] == 24
    assert after["name"] == warm_pool.name
    ids = lambda status: sorted((a["actor_id"], a["pid"]) for a in status["actors"])  # noqa
    assert ids(after) == ids(before)
    assert after["model_loads"] == before["model_loads"] == 2  # no load for the second job
    assert after["rows"] == before["rows"] + 24


def test_different_weights_get_a_different_pool(ray_address, warm_pool, pool_settings):
    other = Pool.get_or_create(ModelSpec(TEST_MODEL, seed=1, weights="random"),
                               PoolSettings(num_actors=1, batch_size=TEST_BATCH))
    try:
        assert other.name != warm_pool.name
        assert other.status()["weights_digest"] != warm_pool.status()["weights_digest"]
        same = Pool.get_or_create(ModelSpec(TEST_MODEL, weights="random"), pool_settings)
        assert same.name == warm_pool.name
    finally:
        other.stop()


def test_pool_cli_status_and_stop(ray_address):
    import time

    import psutil
    import ray

    cli = [sys.executable, "-m", "hybrid_infer.cli", "pool"]
    env = {**__import__("os").environ, **RAY_ENV}
    started = subprocess.run(cli + ["start", "--json", "--ray-address", ray_address, "--model",
                                    "mobilenet_v3_small", "--weights", "random", "--num-actors", "2"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert started.returncode == 0, started.stderr[-3000:]
    name = json.loads(started.stdout)["name"]

    status = subprocess.run(cli + ["status", "--json", "--ray-address", ray_address,
                                   "--name", name],
                            capture_output=True, text=True, timeout=120, env=env)
    assert status.returncode == 0, status.stderr[-3000:]
    (report,) = json.loads(status.stdout)
    assert report["model"] == "torchvision:mobilenet_v3_small:1000"
    assert len(report["actors"]) == 2 and report["model_loads"] == 2
    assert {a["device"] for a in report["actors"]} == {"cpu"}

    stopped = subprocess.run(cli + ["stop", "--ray-address", ray_address, "--name", name],
                             capture_output=True, text=True, timeout=120, env=env)
    assert stopped.returncode == 0 and "2 actors" in stopped.stdout, stopped.stderr[-2000:]
    assert name not in Pool.names()
    for index in range(2):
        with pytest.raises(ValueError):
            ray.get_actor(f"{name}-actor-{index}")
    pids = [a["pid"] for a in report["actors"]]
    deadline = time.time() + 30
    while any(psutil.pid_exists(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(psutil.pid_exists(pid) for pid in pids), "actor processes left behind"


def test_an_idle_pool_scales_to_zero_and_keeps_its_manager(ray_address):
    import time

    import ray

    pool = Pool.get_or_create(ModelSpec("mobilenet_v3_small", seed=5, weights="random"),
                              PoolSettings(num_actors=1, idle_timeout_s=3))
    try:
        assert len(pool.actors()) == 1
        deadline = time.time() + 60
        while pool.actors() and time.time() < deadline:
            time.sleep(1)
        assert pool.actors() == [], "idle pool still has its actor after 60 s"
        assert pool.name in Pool.names()  # the manager stays, with the weights
        assert pool.status()["weights_bytes"] > 0
        with pytest.raises(ValueError):
            ray.get_actor(f"{pool.name}-actor-0")
    finally:
        pool.stop()


def test_a_pool_the_cluster_cannot_place_fails_clearly(ray_address):
    # Placing has its own bound: a slow weights build (a busy machine) is not this error.
    settings = PoolSettings(num_actors=1, num_cpus_per_actor=64, place_timeout_s=5)
    spec = ModelSpec("mobilenet_v3_small", seed=9, weights="random")
    with pytest.raises(PoolError, match="not placed and loaded within 5 s "
                                        r"\(place_timeout_s\).*'num_cpus': 64.*fewer actors"):
        Pool.get_or_create(spec, settings)
    for name in Pool.names():
        if Pool.get(name).describe()["spec"] == spec:
            Pool.get(name).stop()


COLD_DRIVER = textwrap.dedent("""
    import json, sys
    import ray
    from hybrid_infer.models import ModelSpec
    from hybrid_infer.pool.registry import Pool
    from hybrid_infer.pool.settings import PoolSettings
    ray.init(address=sys.argv[1], namespace="hybrid_infer")
    pool = Pool.get_or_create(ModelSpec("%s", seed=11, weights="random"),
                              PoolSettings(num_actors=1, torch_threads=1))
    status = pool.status()
    pool.stop()
    print("RESULT" + json.dumps({"torch_in_driver": "torch" in sys.modules,
                                 "loads": status["model_loads"],
                                 "weights_bytes": status["weights_bytes"]}))
""" % TEST_MODEL)


def test_a_new_pool_builds_its_weights_off_the_driver(ray_address):
    # The driver of a hybrid job never imports torch nor holds the weights: a one-off
    # task builds them into the object store, owned by the pool's manager.
    result = subprocess.run([sys.executable, "-c", COLD_DRIVER, ray_address],
                            capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, **RAY_ENV})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("RESULT", 1)[1])
    assert report["torch_in_driver"] is False
    assert report["loads"] == 1
    assert report["weights_bytes"] > 40_000_000  # resnet18's 11.7M float32 parameters


def test_bad_weights_fail_the_pool_start_with_the_model_error(ray_address, tmp_path):
    from hybrid_infer.errors import ModelError

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="could not load checkpoint") as raised:
        Pool.get_or_create(ModelSpec(TEST_MODEL, weights=str(garbage)),
                           PoolSettings(num_actors=1, torch_threads=1))
    assert "Traceback" not in str(raised.value)
    for name in Pool.names():  # the manager of the failed start
        if Pool.get(name).describe()["spec"].weights == str(garbage):
            Pool.get(name).stop()


def test_streams_share_each_batch_and_run_concurrently():
    import threading
    import time

    import numpy as np
    import torch

    from hybrid_infer.actor.pipeline import InferencePipeline

    calls, running, most = [], [0], [0]
    lock = threading.Lock()

    def model(tensors):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
            calls.append((threading.current_thread().name, len(tensors)))
        return torch.stack(tensors).numpy()

    pipeline = InferencePipeline(model, batch_size=8, decode_threads=2, streams=2)
    outputs, errors = pipeline.run([float(i) for i in range(40)],
                                   lambda value: torch.full((1,), value), timeout=30)
    assert errors == [None] * 40
    np.testing.assert_array_equal(outputs[:, 0], np.arange(40))  # each row in its place
    assert max(rows for _, rows in calls) <= 4  # a stream computes half of the batch
    assert {name for name, _ in calls} == {"model-0", "model-1"} and most[0] == 2
    assert pipeline.stats.rows == 40


def test_stream_layout_and_its_validation():
    from hybrid_infer.errors import ConfigurationError

    assert PoolSettings(batch_size=32).stream_layout("cpu", 4) == (4, 1)
    assert PoolSettings(batch_size=32).stream_layout("cuda", 4) == (1, 4)
    assert PoolSettings(batch_size=32, streams=2).stream_layout("cpu", 4) == (2, 2)
    assert PoolSettings(batch_size=2).stream_layout("cpu", 4) == (2, 2)
    assert PoolSettings(optimize="compile").stream_layout("cpu", 2) == (1, 2)
    with pytest.raises(ConfigurationError, match="streams must be >= 1"):
        PoolSettings(streams=0)
    with pytest.raises(ConfigurationError, match="not safe to call from several threads"):
        PoolSettings(optimize="compile", streams=2)


def test_a_two_stream_actor_matches_direct_pytorch(images_df, expected, ray_address):
    settings = PoolSettings(num_actors=1, batch_size=TEST_BATCH, torch_threads=2,
                            num_cpus_per_actor=0.5)
    pool = Pool.get_or_create(ModelSpec(TEST_MODEL, weights="random"), settings)
    try:
        rows = infer(images_df, TEST_MODEL, weights="random",
                     pool=settings, ray_address=ray_address).collect()
        assert_matches(rows, expected)
        (actor,) = pool.status()["actors"]
        assert (actor["streams"], actor["threads_per_stream"]) == (2, 1)
        assert actor["batches"] >= len(rows) // (TEST_BATCH // 2)
    finally:
        pool.stop()


def test_a_pool_holding_a_dead_actor_still_scales_down_when_idle(ray_address, caplog):
    import logging
    import time

    import ray

    caplog.set_level(logging.INFO, logger="hybrid_infer")
    pool = Pool.get_or_create(ModelSpec("mobilenet_v3_small", seed=6, weights="random"),
                              PoolSettings(num_actors=2, idle_timeout_s=3, torch_threads=1,
                                           num_cpus_per_actor=0.5))
    assert f"started pool {pool.name}" in caplog.text
    ray.kill(pool.actors()[0], no_restart=True)
    try:
        started = time.time()
        while pool.actors() and time.time() < started + 45:
            time.sleep(0.5)
        assert pool.actors() == [], "a pool with a dead actor never scaled down when idle"
        for index in range(2):  # its live actor went with it
            with pytest.raises(ValueError):
                ray.get_actor(f"{pool.name}-actor-{index}")
    finally:
        pool.stop()


def test_the_idle_check_counts_a_dead_actor_as_idle_and_says_why(ray_address, caplog):
    import logging

    import ray

    from hybrid_infer.pool.manager import PoolManager
    from hybrid_infer.pool.scaling import IdlePolicy
    from hybrid_infer.pool.settings import PoolKey
    from hybrid_infer.weights import weights_digest

    caplog.set_level(logging.INFO, logger="hybrid_infer")
    spec = ModelSpec("mobilenet_v3_small", seed=8, weights="random")
    settings = PoolSettings(num_actors=2, idle_timeout_s=3600, torch_threads=1,
                            num_cpus_per_actor=0.5)
    # The manager's logic, run in this process (the detached one logs to its worker log).
    manager = PoolManager(PoolKey.derive(spec.identity, weights_digest(spec), settings.actor),
                          spec, settings)
    actors = manager.start(2, None, ray.get_runtime_context().get_node_id())
    # idle at once from now on (its own loop next looks in 30 s: this call is first)
    manager._idle = IdlePolicy(idle_timeout_s=1e-6, min_actors=0)
    try:
        ray.kill(actors[1], no_restart=True)
        # ray.kill is asynchronous: wait until the actor is gone, or it may still answer.
        with pytest.raises(ray.exceptions.RayActorError):
            for _ in range(60):
                ray.get(actors[1].ping.remote(), timeout=30)
                time.sleep(0.5)
        assert manager._reap_if_idle(timeout=30) is True
        assert "actor 1 counts as idle: " in caplog.text  # with Ray's reason after it
        assert "idle for" in caplog.text and "scaled down from 2 to 0 actor(s)" in caplog.text
        assert manager.actors() == []
    finally:
        manager.stop()


def test_a_job_asking_for_other_placement_is_told_the_pool_keeps_its_own(
        ray_address, warm_pool, pool_settings, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="hybrid_infer")
    same = Pool.get_or_create(ModelSpec(TEST_MODEL, weights="random"), pool_settings.replace(
        idle_timeout_s=60, max_in_flight=5))  # max_in_flight is the job's own: no warning
    assert same.name == warm_pool.name
    (record,) = [r for r in caplog.records if warm_pool.name in r.getMessage()]
    assert record.levelname == "WARNING"
    assert "idle_timeout_s=3600.0" in record.getMessage()
    assert "asked for idle_timeout_s=60" in record.getMessage()
    assert "max_in_flight" not in record.getMessage()
    assert warm_pool.status()["placement"]["idle_timeout_s"] == 3600.0


def test_an_actor_that_cannot_start_fails_the_start_with_its_own_error(ray_address):
    from hybrid_infer.errors import ModelError

    settings = PoolSettings(num_actors=1, torch_threads=1, num_cpus_per_actor=0.5,
                            embedding_layer="no_such_layer")
    spec = ModelSpec("mobilenet_v3_small", seed=10, weights="random")
    with pytest.raises(ModelError, match="no layer 'no_such_layer'"):
        Pool.get_or_create(spec, settings)
    for name in Pool.names():
        if Pool.get(name).describe()["spec"] == spec:
            Pool.get(name).stop()
