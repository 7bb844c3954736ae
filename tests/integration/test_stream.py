"""Structured Streaming: files arriving in a folder, one warm pool, exactly-once output.

The driver-restart test runs `hybrid-infer stream` as a user would (a subprocess with
a clean environment, against a running Ray cluster), kills it with SIGKILL between two
waves of files, restarts it from the same checkpoint and checks that every file came
back exactly once, served by the same warm pool.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from predictions import TEST_BATCH, TEST_MODEL, local_path
from hybrid_infer.demo_data import generate_jpegs
from hybrid_infer.models import ModelSpec
from hybrid_infer.pool.settings import PoolSettings

CLI = os.path.join(os.path.dirname(sys.executable), "hybrid-infer")
SETTINGS = PoolSettings(num_actors=1, batch_size=TEST_BATCH, num_cpus_per_actor=0.5)


def _wave(folder, name: str, count: int, seed: int) -> set[str]:
    """Write `count` JPEGs into folder/name, atomically (a stream must never see half a
    file): generated beside the folder, then renamed in."""
    staging = folder.parent / f"staging-{name}"
    generate_jpegs(str(staging), count, seed=seed, min_side=64, max_side=160)
    target = folder / name
    os.rename(staging, target)
    return {str(target / file) for file in os.listdir(target)}


def _output_paths(spark, output) -> list[str]:
    """Committed output rows' paths (Spark reads the file sink through its metadata log,
    so files of an uncommitted micro-batch are not counted)."""
    from pyspark.errors import AnalysisException

    try:
        return [local_path(row["path"]) for row in spark.read.parquet(str(output)).collect()]
    except AnalysisException:  # no micro-batch committed yet
        return []


def _wait_for_rows(spark, output, count: int, process=None, timeout: float = 240) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        paths = _output_paths(spark, output)
        if len(paths) >= count:
            return paths
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the stream exited early with {process.returncode}:\n"
                                 f"{process.stdout.read()[-3000:]}")
        time.sleep(1.0)
    raise AssertionError(f"{count} rows expected in {output}, got {len(paths)} in {timeout} s")


def _pool_status_of(spec: ModelSpec) -> dict:
    from hybrid_infer.pool.registry import Pool
    from hybrid_infer.weights import weights_digest

    digest = weights_digest(spec)
    (status,) = [status for status in (Pool.get(name).status() for name in Pool.names())
                 if status["weights_digest"] == digest]
    return status


def test_a_stream_uses_one_warm_pool_and_writes_each_file_once(spark, ray_address, tmp_path,
                                                                stop_new_pools):
    from hybrid_infer.stream import start_stream

    incoming, output = tmp_path / "incoming", tmp_path / "out"
    incoming.mkdir()
    spec = ModelSpec(TEST_MODEL, seed=3, weights="random")
    query = start_stream(spark, input_path=str(incoming), output_path=str(output),
                         checkpoint=str(tmp_path / "checkpoint"), model=spec, pool=SETTINGS,
                         ray_address=ray_address, top_k=2)
    try:
        files = _wave(incoming, "first", 5, seed=1)
        query.processAllAvailable()
        files |= _wave(incoming, "second", 4, seed=2)
        (incoming / "not-really.jpg").write_bytes(b"these bytes are not an image")
        files.add(str(incoming / "not-really.jpg"))
        query.processAllAvailable()
    finally:
        query.stop()
    rows = spark.read.parquet(str(output)).collect()
    assert sorted(local_path(row["path"]) for row in rows) == sorted(files)
    errors = {local_path(row["path"]): row["error"] for row in rows}
    assert errors.pop(str(incoming / "not-really.jpg")).startswith("not an image")
    assert set(errors.values()) == {None}
    assert all(len(row["top_k"]["indices"]) == 2 for row in rows if row["error"] is None)
    batches = [p for p in query.recentProgress if p["numInputRows"]]
    assert len(batches) >= 2, "the waves should have been separate micro-batches"
    status = _pool_status_of(spec)
    assert status["model_loads"] == 1, "every micro-batch must use the same warm pool"
    assert status["rows"] == len(files) - 1  # the junk file never reaches the model


def test_a_stream_killed_between_waves_resumes_with_every_file_exactly_once(
        spark, ray_address, tmp_path, stop_new_pools):
    incoming, output, checkpoint = tmp_path / "incoming", tmp_path / "out", tmp_path / "ckpt"
    incoming.mkdir()
    argv = [CLI, "stream", "--input", str(incoming), "--output", str(output),
            "--checkpoint", str(checkpoint), "--ray-address", ray_address,
            "--model", TEST_MODEL, "--weights", "random", "--seed", "5",
            "--batch-size", str(TEST_BATCH), "--num-actors", "1", "--trigger-seconds", "1"]
    # A clean environment: what a user's shell holds, plus the Ray cluster's token
    # (a driver joining a token-auth cluster needs it).
    from runtime_env import RAY_ENV

    env = {name: os.environ[name] for name in ("PATH", "HOME", "JAVA_HOME")
           if name in os.environ}
    env.update({name: RAY_ENV[name] for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})

    def start():
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True, cwd=tmp_path)

    files = _wave(incoming, "first", 6, seed=11)
    first = start()
    try:
        _wait_for_rows(spark, output, len(files), first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # a crash: no clean shutdown of anything
        first.wait(timeout=60)
    files |= _wave(incoming, "second", 5, seed=12)
    second = start()
    try:
        paths = _wait_for_rows(spark, output, len(files), second)
        time.sleep(3)  # a duplicate would be a further micro-batch: give it time to show
        paths = _output_paths(spark, output)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            log = second.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            os.killpg(second.pid, signal.SIGKILL)
            raise
    assert sorted(paths) == sorted(files), "files lost or written twice across the restart"
    assert second.returncode == 0, log[-3000:]
    assert "stream stopped" in log
    status = _pool_status_of(ModelSpec(TEST_MODEL, seed=5, weights="random"))
    assert status["model_loads"] == 1, "the restarted driver should find the pool warm"


def test_stream_refuses_fail_fast_and_an_output_equal_to_its_input(spark, tmp_path):
    from hybrid_infer.errors import InputError
    from hybrid_infer.stream import start_stream

    with pytest.raises(InputError, match="fail_fast"):
        start_stream(spark, input_path=str(tmp_path), output_path=str(tmp_path / "o"),
                     checkpoint=str(tmp_path / "c"), fail_fast=True)
    with pytest.raises(InputError, match="must not be its input"):
        start_stream(spark, input_path=str(tmp_path), output_path=str(tmp_path),
                     checkpoint=str(tmp_path / "c"))
