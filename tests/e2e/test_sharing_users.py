"""Warm pools share the cluster, run as users run: clean subprocesses, a user's own
`local[2]` SparkSession, and no settings at all (every pool on its defaults).

- Three different models one after another in one session: every row of each job
  comes back, and the least recently used idle pool gave its actor back to the next
  instead of holding it (the embedded Ray of this machine has 2 CPUs).
- Drivers on one Ray cluster (a `ray start` head, as README's warm-pool section):
  driver A's job keeps its pool busy while driver B's job ends (its pool idle) and
  driver C starts a third model: B's idle pool gives way, A's busy one is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from runtime_env import clean_env, free_port, launch_ray_head, stop_group, wait_for_port
from test_user_sessions import run_script

THREE_MODELS = """
    import json, os, sys, time
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.master("local[2]").getOrCreate()   # the user's, first
    import ray
    from hybrid_infer import infer, read_images
    from hybrid_infer.pool.registry import Pool

    images = read_images(spark, sys.argv[1])
    jobs = []
    for model in ("resnet18", "mobilenet_v3_small", "squeezenet1_0"):
        started = time.perf_counter()
        rows = infer(images, model, weights="random").collect()
        jobs.append({"model": model, "paths": sorted(r["path"] for r in rows),
                     "errors": [r["error"] for r in rows if r["error"]],
                     "seconds": round(time.perf_counter() - started, 1)})
    pools = {}
    for name in Pool.names():
        status = Pool.get(name).status()
        pools[status["model"].split(":")[1]] = {
            "actors": len(status["actors"]), "resizes": [r[3] for r in status["resizes"]],
            "threads": [a["torch_threads"] for a in status["actors"]]}
    print("RESULT" + json.dumps({"jobs": jobs, "pools": pools,
                                 "ray_cpus": ray.cluster_resources()["CPU"],
                                 "cores": len(os.sched_getaffinity(0))}))
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_three_models_in_one_session_each_get_room_from_idle_pools(tmp_path, image_dir):
    result, seconds = run_script(tmp_path, THREE_MODELS, image_dir, timeout=1100)
    files = sorted(os.path.join(image_dir, f) for f in os.listdir(image_dir))
    for job in result["jobs"]:
        assert [p.replace("file:", "") for p in job["paths"]] == files, job["model"]
        assert not job["errors"], job
    pools = result["pools"]
    assert set(pools) == {"resnet18", "mobilenet_v3_small", "squeezenet1_0"}
    # a slot for each new pool: the least recently used idle one gave way
    gave_way = [model for model, pool in pools.items()
                if any(why.startswith("gave way to") for why in pool["resizes"])]
    assert "resnet18" in gave_way and pools["squeezenet1_0"]["actors"] == 1
    # the default CPU pool runs its model on the node's cores, not on one thread
    expected = max(1, min(int(result["ray_cpus"]), result["cores"]))
    assert pools["squeezenet1_0"]["threads"] == [expected]
    print("FIGURES three_models " + " ".join(f"{j['model']}_s={j['seconds']}"
                                             for j in result["jobs"]))


BUSY_DRIVER = """
    import json, os, sys, time
    from pyspark.sql import SparkSession
    from pyspark.sql.types import FloatType

    spark = SparkSession.builder.master("local[2]").getOrCreate()
    from hybrid_infer import predict_batch_udf
    from hybrid_infer.pool.registry import Pool

    flags = sys.argv[2]

    def make_waiting_fn():
        import os as files, time as clock

        def predict(inputs):
            open(files.path.join(flags, "busy"), "w").close()
            deadline = clock.time() + 300
            while not files.path.exists(files.path.join(flags, "release")):
                if clock.time() > deadline:
                    raise TimeoutError("the test never released this job")
                clock.sleep(0.2)
            return inputs * 2.0
        return predict

    double = predict_batch_udf(make_waiting_fn, return_type=FloatType(), batch_size=10,
                               ray_address=sys.argv[1])
    rows = spark.range(40).repartition(2).select("id", double("id").alias("y")).collect()
    mine = [Pool.get(n).status() for n in Pool.names()]
    mine = [s for s in mine if s["model"].startswith("predict_fn")][0]
    print("RESULT" + json.dumps({"rows": sorted((r["id"], r["y"]) for r in rows),
                                 "resizes": [r[3] for r in mine["resizes"]],
                                 "replaced": mine["replaced_actors"],
                                 "loads": mine["model_loads"]}))
"""

IMAGE_DRIVER = """
    import json, sys
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.master("local[2]").getOrCreate()
    from hybrid_infer import infer, read_images
    from hybrid_infer.pool.registry import Pool

    rows = infer(read_images(spark, sys.argv[2]), sys.argv[3], weights="random",
                 ray_address=sys.argv[1]).collect()
    pools = {}
    for name in Pool.names():
        status = Pool.get(name).status()
        pools[status["model"].split(":")[1]] = [r[3] for r in status["resizes"]]
    print("RESULT" + json.dumps({"rows": len(rows),
                                 "errors": [r["error"] for r in rows if r["error"]],
                                 "pools": pools}))
"""


@pytest.fixture
def users_ray_head(tmp_path):
    """A Ray head as README's warm-pool section starts one (no token), on its own port,
    in a process group of its own that the test stops."""
    port = free_port()
    head = launch_ray_head(
        ["--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"],
        env=clean_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"), port=port,
        log_path=tmp_path / "ray_head.log")
    try:
        wait_for_port(port, head)
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(head)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_drivers_share_a_cluster_idle_pools_give_way_busy_ones_never(
        tmp_path, image_dir, users_ray_head):
    flags = tmp_path / "flags"
    flags.mkdir()
    busy_dir = tmp_path / "busy"
    busy_dir.mkdir()
    (busy_dir / "user_script.py").write_text(__import__("textwrap").dedent(BUSY_DRIVER))
    busy = subprocess.Popen([sys.executable, str(busy_dir / "user_script.py"),
                             users_ray_head, str(flags)], cwd=str(busy_dir), env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while not (flags / "busy").exists():
            assert busy.poll() is None, busy.communicate()[1][-3000:]
            assert time.time() < deadline, "driver A's job never started"
            time.sleep(0.5)
        for name in ("b", "c"):
            (tmp_path / name).mkdir()
        second, _ = run_script(tmp_path / "b", IMAGE_DRIVER, users_ray_head, image_dir,
                               "mobilenet_v3_small", timeout=900)
        third, third_s = run_script(tmp_path / "c", IMAGE_DRIVER, users_ray_head, image_dir,
                                    "squeezenet1_0", timeout=900)
    finally:
        (flags / "release").touch()
        out, err = busy.communicate(timeout=600)
    assert busy.returncode == 0, err[-3000:]
    first = __import__("json").loads(out.split("RESULT", 1)[1].splitlines()[0])
    assert first["rows"] == [[i, 2.0 * i] for i in range(40)]
    # the busy pool was never scaled down for the others, nor reloaded
    assert first["resizes"] == ["start"] and first["replaced"] == 0 and first["loads"] == 1
    for job in (second, third):
        assert job["rows"] == len(os.listdir(image_dir)) and not job["errors"]
    # the third model got its slot from driver B's idle pool
    assert any(why.startswith("gave way to") for why in third["pools"]["mobilenet_v3_small"])
    print(f"FIGURES drivers third_model_job_s={third_s:.1f}")
