"""Issue 4, items 2-6 and the soak: dying actors, memory pressure, Spark task retries,
unreachable pieces, security. Every fault is real; every job's output is checked row
for row against its input (the `id` column): nothing lost, nothing duplicated.

Figures for the report are printed (run with -s) as `FIGURES {json}` lines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from hybrid_infer import infer
from hybrid_infer.errors import ConfigurationError, ModelError, PoolError
from hybrid_infer.errors import from_spark
from hybrid_infer.models import ModelSpec
from hybrid_infer.pool.manager import PoolManager
from hybrid_infer.pool.registry import Pool
from hybrid_infer.pool.settings import PoolKey
from hybrid_infer.runtime import NAMESPACE

from paths import SUPPORT
from runtime_env import RAY_ENV, free_port
from faults import (SMALL_MODEL, ActorKiller, actor_pids, assert_rows_exactly, bad_samples,
                    images_frame, reference_rows, rgb_jpeg, small_jpegs,
                    small_preprocess, small_settings, wait_recovered)

#: Loaded machines are slow; a hang is forever. Anything under this is "within seconds".
FAIL_WITHIN_S = 60


def figures(name: str, **values) -> None:
    print(f"FIGURES {json.dumps({'test': name, **values})}")


def run_job(spark, ray_address, values, *, preprocess=None, settings=None, **options):
    started = time.perf_counter()
    rows = infer(images_frame(spark, values), SMALL_MODEL, weights="random",
                 pool=settings or small_settings(),
                 preprocess=preprocess or small_preprocess(), ray_address=ray_address,
                 **{"rows_per_batch": 2, **options}).collect()
    return rows, time.perf_counter() - started


# -- 2. actor death --------------------------------------------------------------------
@pytest.mark.slow
def test_actor_killed_mid_job_batches_are_resent_and_pool_heals(spark, ray_address,
                                                                small_pool):
    values = small_jpegs(240, seed=11)
    preprocess = small_preprocess(resize=160, crop=160)  # slow enough to strike mid-job
    expected = reference_rows(ModelSpec(SMALL_MODEL, weights="random"), values, preprocess)
    run_job(spark, ray_address, small_jpegs(8), preprocess=preprocess)  # warm Spark's workers
    _, baseline_s = run_job(spark, ray_address, values, preprocess=preprocess)
    before = small_pool.status()
    killer = ActorKiller(small_pool, every=24)
    killer.start()
    rows, seconds = run_job(spark, ray_address, values, preprocess=preprocess)
    killer.stop()
    assert len(killer.killed) == 1, "the job ended before the actor could be killed"
    report = assert_rows_exactly(rows, expected)
    after = small_pool.status()
    assert after["replaced_actors"] == before["replaced_actors"] + 1
    assert len(after["actors"]) == 2 and killer.killed[0] not in actor_pids(small_pool)
    figures("actor_killed_mid_job", faults=1, **report, baseline_job_s=round(baseline_s, 2),
            job_with_kill_s=round(seconds, 2), pool_recovered_s=killer.recovery_s,
            heal_s=after["last_heal_s"])


@pytest.mark.slow
def test_actor_lost_while_idle_is_replaced_by_the_next_job(spark, ray_address, small_pool):
    import psutil

    values = small_jpegs(24, seed=12)
    expected = reference_rows(ModelSpec(SMALL_MODEL, weights="random"), values, small_preprocess())
    before = small_pool.status()
    victim = max(actor_pids(small_pool))
    os.kill(victim, signal.SIGKILL)
    psutil.Process(victim).wait(timeout=30) if psutil.pid_exists(victim) else None
    rows, seconds = run_job(spark, ray_address, values)
    report = assert_rows_exactly(rows, expected)
    # the job ran on the live actor while the pool replaced the dead one
    assert wait_recovered(small_pool, 2, victim, timeout_s=FAIL_WITHIN_S)
    after = small_pool.status()
    assert after["replaced_actors"] == before["replaced_actors"] + 1
    figures("actor_lost_while_idle", faults=1, **report, job_s=round(seconds, 2),
            heal_s=after["last_heal_s"])


# -- 3. memory pressure ------------------------------------------------------------------
ROW_BYTES_64 = 3 * 64 * 64 * 4  # one 64x64 RGB float32 input tensor


@pytest.mark.slow
def test_batches_over_the_memory_cap_are_split_down_to_one_row(spark, ray_address):
    values = small_jpegs(20, seed=13)
    pool = Pool.get_or_create(ModelSpec(SMALL_MODEL, weights="random"), small_settings(
        num_actors=1, max_batch_bytes=int(2.5 * ROW_BYTES_64)))
    try:
        settings = small_settings(num_actors=1, max_batch_bytes=int(2.5 * ROW_BYTES_64))
        # Batches of 4 rows need 4 x 48 KiB: over the cap; halves of 2 rows fit.
        expected = reference_rows(ModelSpec(SMALL_MODEL,
                                            weights="random"), values, small_preprocess())
        rows, _ = run_job(spark, ray_address, values, settings=settings, rows_per_batch=4)
        report = assert_rows_exactly(rows, expected)
        status = pool.status()
        assert status["actors"][0]["split_retries"] > 0 and report["errors"] == 0
        # At 128x128 even one row (192 KiB) is over the cap: every row fails, none crashes.
        big = small_preprocess(resize=128, crop=128)
        rows, _ = run_job(spark, ray_address, values, settings=settings, preprocess=big)
        reason = ("out of memory: BatchMemoryError: a batch of 1 rows needs 196608 bytes, "
                  f"over max_batch_bytes={int(2.5 * ROW_BYTES_64)}")
        report = assert_rows_exactly(rows, {key: reason for key in values})
        figures("memory_cap", **report, split_retries=pool.status()["actors"][0]["split_retries"])
    finally:
        pool.stop()


def test_cuda_out_of_memory_is_split_and_retried_like_the_host_cap():
    import torch

    from hybrid_infer.actor.pipeline import InferencePipeline

    calls = []

    def model(tensors):  # a GPU that holds at most two rows
        calls.append(len(tensors))
        if len(tensors) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.stack(tensors).reshape(len(tensors), -1)[:, :1].numpy() + 1

    pipeline = InferencePipeline(model, batch_size=8, decode_threads=1)
    outputs, errors = pipeline.run([float(i) for i in range(8)],
                                   lambda v: torch.full((1, 2), v), timeout=30)
    assert errors == [None] * 8
    np.testing.assert_array_equal(outputs[:, 0], np.arange(8) + 1)
    assert max(calls) > 2 and pipeline.stats.split_retries > 0

    def never_fits(tensors):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    _, errors = InferencePipeline(never_fits, batch_size=4).run(
        [1.0, 2.0, 3.0], lambda v: torch.zeros(1), timeout=30)
    assert errors == ["out of memory: OutOfMemoryError: CUDA out of memory"] * 3


def _object_store_used() -> float:
    """Bytes in the cluster's object stores now (Ray's resource view, refreshed ~1/s)."""
    import ray

    return (ray.cluster_resources()["object_store_memory"]
            - ray.available_resources().get("object_store_memory", 0))


def _noise_jpeg(seed: int, side: int = 420) -> bytes:
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.mark.slow
def test_batches_held_by_the_pool_are_bounded_by_the_in_flight_window(spark, ray_address):
    # Rows of ~380 KB, 2 per batch (~760 KB). Batches travel over Arrow Flight, straight
    # to the actors: the object store never holds them, and each actor holds at most
    # the windows of the tasks sending to it at once.
    values = {f"big-{i:03d}": _noise_jpeg(i) for i in range(48)}
    data_bytes = sum(len(v) for v in values.values())
    per_batch = 2 * max(len(v) for v in values.values())
    tasks, window = 2, 1  # 2 Spark tasks (local[2]) x max_in_flight 1, per actor
    window_bytes = tasks * window * 2 * per_batch
    settings = small_settings(max_in_flight=window)
    spec = ModelSpec(SMALL_MODEL, seed=3, weights="random")  # a pool of its own: fresh high-water marks
    pool = Pool.get_or_create(spec, settings)
    baseline = _object_store_used()
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _object_store_used())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        started = time.perf_counter()
        rows = infer(images_frame(spark, values), spec, pool=settings,
                     preprocess=small_preprocess(), ray_address=ray_address,
                     rows_per_batch=2).collect()
        seconds = time.perf_counter() - started
        status = pool.status()
    finally:
        stop.set()
        sampler.join()
        pool.stop()
    expected = reference_rows(spec, values, small_preprocess())
    report = assert_rows_exactly(rows, expected)
    held = [actor["held_batches_peak"] for actor in status["actors"]]
    used = int(peak[0] - baseline)
    figures("in_flight_bound", **report, data_bytes=data_bytes, window_bytes=window_bytes,
            held_batches_peak=held, peak_object_store_bytes_over_baseline=used,
            job_s=round(seconds, 1))
    assert data_bytes > 4 * window_bytes
    assert status["rows"] == len(values) and all(h >= 1 for h in held), held
    assert all(h <= tasks * window for h in held), (held, tasks * window)
    assert used < per_batch, (used, per_batch)  # no payload went through the object store


# -- 4. Spark task retries ---------------------------------------------------------------
RETRY_DRIVER = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, sys.argv[4])
    from pyspark import TaskContext
    from hybrid_infer import infer
    from hybrid_infer.runtime import connect_ray, start_spark
    import faults

    address, output, markers = sys.argv[1], sys.argv[2], sys.argv[3]
    connect_ray(address)
    # local[2, 4]: two cores, a failed task is tried up to 4 times (as on a cluster).
    spark, _ = start_spark("local[2,4]")
    values = faults.small_jpegs(60, seed=21)
    result = infer(faults.images_frame(spark, values, partitions=3), faults.SMALL_MODEL,
                   weights="random",
                   pool=faults.small_settings(), preprocess=faults.small_preprocess(),
                   ray_address=address, rows_per_batch=2)

    def die_once(batches):
        # The first attempt of partition 0 writes some rows, then its Python worker dies.
        context = TaskContext.get()
        seen = 0
        for batch in batches:
            for offset in range(batch.num_rows):
                yield batch.slice(offset, 1)
                seen += 1
                if context.partitionId() == 0 and seen == 5:
                    marker = os.path.join(markers, f"attempt-{context.attemptNumber()}")
                    open(marker, "w").close()
                    if context.attemptNumber() == 0:
                        os.kill(os.getpid(), signal.SIGKILL)

    result.mapInArrow(die_once, result.schema).write.parquet(output)
    print("RESULT" + json.dumps(sorted(os.listdir(markers))))
""")


@pytest.mark.slow
def test_a_retried_spark_task_writes_no_duplicates_and_loses_no_row(tmp_path, ray_address,
                                                                    small_pool):
    import pyarrow.parquet as pq

    output, markers = tmp_path / "out", tmp_path / "markers"
    markers.mkdir()
    tests_dir = SUPPORT  # the helpers the driver imports
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RETRY_DRIVER, ray_address, str(output),
                           str(markers), tests_dir], capture_output=True, text=True,
                          timeout=400, env={**os.environ, **RAY_ENV,
                                            "PYTHONPATH": os.pathsep.join(
                                                [os.environ.get("PYTHONPATH", ""), tests_dir])})
    assert done.returncode == 0, done.stderr[-4000:]
    attempts = json.loads(done.stdout.split("RESULT", 1)[1])
    assert attempts == ["attempt-0", "attempt-1"], attempts  # it did die, and was retried
    values = small_jpegs(60, seed=21)
    expected = reference_rows(ModelSpec(SMALL_MODEL, weights="random"), values, small_preprocess())
    rows = pq.read_table(output).to_pylist()
    report = assert_rows_exactly(rows, expected)
    figures("spark_task_retry", faults=1, **report, job_s=round(time.perf_counter() - started, 1))


# -- 5. unreachable or missing pieces --------------------------------------------------
@pytest.mark.slow
def test_unreachable_ray_address_fails_fast_in_the_cli(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(rgb_jpeg())
    address = f"127.0.0.1:{free_port()}"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hybrid_infer.cli", "run", "--input",
                           str(images), "--output", str(tmp_path / "out"), "--ray-address",
                           address, "--weights", "random"], capture_output=True, text=True,
                          timeout=FAIL_WITHIN_S * 2, env={**os.environ, **RAY_ENV})
    seconds = time.perf_counter() - started
    assert done.returncode == 1, done.stderr[-3000:]   # a runtime error, not a usage one
    assert f"no Ray cluster answers at '{address}'" in done.stderr, done.stderr[-2000:]
    assert "ray start --head" in done.stderr
    assert seconds < FAIL_WITHIN_S
    figures("ray_unreachable", seconds=round(seconds, 1))


def test_unroutable_ray_address_fails_within_the_connect_timeout():
    from hybrid_infer.runtime import prepare_ray_address

    started = time.perf_counter()
    with pytest.raises(ConfigurationError, match="no Ray cluster answers at '192.0.2.1:6379'"):
        prepare_ray_address("192.0.2.1:6379", timeout_s=3)  # TEST-NET-1: never answers
    assert time.perf_counter() - started < 10


def test_auto_resolves_to_the_loopback_head_it_finds(ray_address, monkeypatch):
    """'auto' finds a loopback head (here through RAY_ADDRESS, as `ray job submit` sets
    it): the engine joins 127.0.0.1 itself, never the routable IP Ray rewrites it to,
    where a loopback head does not listen."""
    from hybrid_infer.runtime import prepare_ray_address

    monkeypatch.setenv("RAY_ADDRESS", ray_address)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")  # restored after the test
    assert prepare_ray_address("auto") == ray_address
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_unreachable_spark_master_fails_fast(spark):
    from hybrid_infer.runtime import start_spark

    master = f"spark://127.0.0.1:{free_port()}"
    started = time.perf_counter()
    with pytest.raises(ConfigurationError) as caught:
        start_spark(master)
    assert time.perf_counter() - started < FAIL_WITHIN_S
    message = str(caught.value)
    assert f"no Spark master answers at {master!r}" in message and "--spark-master" in message


@pytest.mark.slow
def test_pool_stopped_mid_job_fails_with_a_clear_error(spark, ray_address):
    values = small_jpegs(240, seed=14)
    settings = small_settings(num_actors=1)
    spec = ModelSpec(SMALL_MODEL, seed=5, weights="random")  # a pool of its own
    pool = Pool.get_or_create(spec, settings)

    def stop_when_busy():
        while (pool.status()["rows"] or 0) < 8:
            time.sleep(0.02)
        pool.stop()

    stopper = threading.Thread(target=stop_when_busy, daemon=True)
    stopper.start()
    started = time.perf_counter()
    with pytest.raises(Exception) as caught:
        infer(images_frame(spark, values), spec, pool=settings, ray_address=ray_address,
              preprocess=small_preprocess(resize=160, crop=160), rows_per_batch=2).collect()
    seconds = time.perf_counter() - started
    stopper.join(timeout=30)
    error = from_spark(caught.value)
    assert isinstance(error, PoolError), str(caught.value)[:3000]
    assert re.search(r"stopped|no pool named", str(error)), str(error)
    assert seconds < FAIL_WITHIN_S
    figures("pool_stopped_mid_job", seconds=round(seconds, 1), error=str(error))


def test_batch_timeout_fires(spark, ray_address, small_pool):
    values = small_jpegs(16, seed=15)
    started = time.perf_counter()
    with pytest.raises(Exception) as caught:
        run_job(spark, ray_address, values, settings=small_settings(batch_timeout_s=0.001),
                preprocess=small_preprocess(resize=224, crop=224), rows_per_batch=8)
    assert time.perf_counter() - started < FAIL_WITHIN_S
    error = from_spark(caught.value)
    assert isinstance(error, PoolError) and "batch_timeout_s" in str(error), \
        str(caught.value)[:3000]


# -- 6. security -------------------------------------------------------------------------
class _RunsCode:
    """A pickle payload: unpickling it writes a file (stands for arbitrary code)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('owned')",))


def test_pickled_checkpoints_cannot_run_code_unless_allowed(tmp_path):
    import torch
    from safetensors.torch import save_file

    state = ModelSpec(SMALL_MODEL, weights="random").load_state_dict()
    evil, proof = tmp_path / "evil.pt", tmp_path / "code-ran"
    torch.save({**state, "payload": _RunsCode(str(proof))}, evil)
    with pytest.raises(ModelError, match="allow_pickle=True"):
        ModelSpec(SMALL_MODEL, weights=str(evil)).load_state_dict()
    assert not proof.exists(), "loading a checkpoint ran its code by default"
    # Opting in (trusted files only) is what runs it: the protection above is real.
    ModelSpec(SMALL_MODEL, weights=str(evil), allow_pickle=True).load_state_dict()
    assert proof.exists()
    # Plain state_dicts and safetensors load by default.
    plain, safe = tmp_path / "plain.pt", tmp_path / "model.safetensors"
    torch.save(state, plain)
    save_file({k: v.contiguous() for k, v in state.items()}, str(safe))
    for path in (plain, safe):
        loaded = ModelSpec(SMALL_MODEL, weights=str(path)).load_state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in state)


LISTENERS = textwrap.dedent("""
    import json, time, psutil
    from hybrid_infer.runtime import start_runtime
    with start_runtime() as runtime:
        runtime.spark.range(10).count()
        import ray
        ray.get(ray.remote(lambda: 1).remote())  # a worker process too
        time.sleep(2)
        me = psutil.Process()
        sockets = []
        for process in [me] + me.children(recursive=True):
            try:
                for conn in process.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        sockets.append([process.name(), conn.laddr.ip, conn.laddr.port])
            except psutil.NoSuchProcess:
                pass
        print("RESULT" + json.dumps(sockets))
""")


@pytest.mark.slow
def test_embedded_ray_and_spark_listen_on_loopback_only():
    done = subprocess.run([sys.executable, "-c", LISTENERS], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **RAY_ENV})
    assert done.returncode == 0, done.stderr[-3000:]
    sockets = json.loads(done.stdout.split("RESULT", 1)[1])
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet", "java"} <= names, names  # Ray and Spark were seen
    exposed = [s for s in sockets if s[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not exposed, exposed
    figures("listeners", sockets=len(sockets), processes=sorted(names))


def test_a_local_spark_the_engine_starts_compiles_with_c1_only(spark):
    """runtime.EMBEDDED_JVM_OPTIONS reach the JVM itself (the session fixture is the
    engine's start_spark("local[2]")), after the Java 17 options."""
    from hybrid_infer.runtime import EMBEDDED_JVM_OPTIONS

    bean = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    arguments = list(bean.getInputArguments())
    assert EMBEDDED_JVM_OPTIONS in arguments, arguments
    assert arguments.index(EMBEDDED_JVM_OPTIONS) > arguments.index(
        "--add-opens=java.base/java.lang=ALL-UNNAMED")


def test_pool_actors_live_in_the_project_namespace(small_pool):
    from ray.util import list_named_actors

    mine = [entry for entry in list_named_actors(all_namespaces=True)
            if entry["name"].startswith(small_pool.name)]
    assert len(mine) == 3  # the manager and its two actors
    assert {entry["namespace"] for entry in mine} == {NAMESPACE}


def test_a_pool_serving_another_model_is_never_reused(ray_address):
    import ray

    wanted = ModelSpec(SMALL_MODEL, seed=7, weights="random")
    settings = small_settings(num_actors=1)
    key = PoolKey.derive(wanted.identity, "random-seed-7", settings.actor)
    other = ModelSpec("resnet18", seed=7, weights="random")
    squatter = ray.remote(PoolManager).options(
        name=key.name, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
    ).remote(PoolKey.derive(other.identity, "random-seed-7", settings.actor), other,
             settings)
    try:
        with pytest.raises(PoolError, match="serves torchvision:resnet18"):
            Pool.get_or_create(wanted, settings)
    finally:
        ray.kill(squatter)


# -- soak ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_soak_hundreds_of_batches_with_bad_records_and_actor_kills(spark, ray_address,
                                                                  small_pool):
    values = small_jpegs(600, seed=31)
    bad = list(bad_samples().values())
    keys = sorted(values)
    for n, key in enumerate(keys[::25]):  # a bad record every 25 rows
        values[key] = bad[n % len(bad)][0]
    expected = reference_rows(ModelSpec(SMALL_MODEL, weights="random"), values, small_preprocess())
    killer = ActorKiller(small_pool, every=120, kills=2)
    killer.start()
    rows, seconds = run_job(spark, ray_address, values)  # 600 rows, 2 per batch: 300 batches
    killer.stop()
    report = assert_rows_exactly(rows, expected)
    assert report["errors"] == len(keys[::25])
    assert len(killer.killed) == 2, killer.killed
    figures("soak", batches=300, faults=report["errors"] + len(killer.killed),
            actor_kills=len(killer.killed), bad_records=report["errors"], **report,
            job_s=round(seconds, 1), pool_recovered_s=killer.recovery_s)
