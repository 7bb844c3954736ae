"""One real Ray cluster (a head on loopback) and one real Spark session per test session."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from hybrid_infer.demo_data import generate_jpegs
from hybrid_infer.models import ModelSpec

# Small, fast settings shared by the tests so that they reuse one warm pool.
TEST_MODEL = "resnet18"
TEST_BATCH = 8
N_IMAGES = 24

# The processes that join the test Ray cluster (the head, this test driver, second
# drivers the tests start) get these explicitly: loopback addresses and one token for
# Ray's token auth. Spark's JVM and Python workers do NOT get the token: Spark tasks
# reach pools over Arrow Flight, as a user's would, with no Ray token. (One token per
# test session: every import of this module, in the tests' driver subprocesses too,
# finds it under a name Ray does not read.)
_TOKEN = (os.environ.get("HYBRID_INFER_TEST_RAY_TOKEN") or os.environ.get("RAY_AUTH_TOKEN")
          or secrets.token_hex(32))
os.environ["HYBRID_INFER_TEST_RAY_TOKEN"] = _TOKEN
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": _TOKEN,
}
os.environ.update({k: v for k, v in RAY_ENV.items() if k != "RAY_AUTH_TOKEN"})


def clean_env(**extra) -> dict:
    """A user's shell with the venv activated: no RAY_* variable at all (no token),
    nothing else set by hand."""
    venv_bin = os.path.dirname(sys.executable)
    kept = {k: v for k, v in os.environ.items()
            if not k.startswith(("RAY_", "PYSPARK_", "SPARK_"))
            and k not in ("PYTHONPATH", "HYBRID_INFER_TEST_RAY_TOKEN")}
    return {**kept, "PATH": venv_bin + os.pathsep + kept.get("PATH", ""),
            "VIRTUAL_ENV": os.path.dirname(venv_bin), **extra}

# Nothing in the tests downloads model weights (there is no network here, and CI must
# not depend on one): torch's hub cache is an empty folder of this session, and a
# pretrained torchvision name finds its file there only where a test put it.
os.environ["TORCH_HOME"] = os.path.join(
    __import__("tempfile").mkdtemp(prefix="hybrid-infer-torch-home-"), "torch")


#: The core paths, `pytest -m core`: what the lane that is not README's default runs in
#: CI (README, "Install"): packaging, the transport, both modes end to end, the udf
#: baseline, predict_batch_udf, the ML Transformer, streaming, progress, Ray on Spark,
#: the raydp mode (Spark 3.5) and Spark Connect (Spark 4). By module name, so that a
#: module keeps its place in the selection wherever it lives under tests/.
CORE_MODULES = {
    "test_packaging.py", "test_transport.py", "test_settings.py", "test_row_answers.py",
    "test_foundation.py", "test_outputs.py", "test_predict_batch_udf.py",
    "test_ml_transformer.py", "test_stream.py", "test_progress.py", "test_raydp_mode.py",
    "test_ray_on_spark.py", "test_spark_connect.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in CORE_MODULES:
            item.add_marker(pytest.mark.core)


@pytest.fixture(autouse=True)
def _no_weight_downloads(monkeypatch):
    from hybrid_infer.models import torchvision_spec

    def refuse(url, path, hash_prefix):
        raise OSError(f"tests never download weights ({url}): place the file in "
                      "torch's hub cache, or pass weights='random'")

    monkeypatch.setattr(torchvision_spec, "_download", refuse)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ray_head(log_path, num_cpus: int = 8) -> tuple[subprocess.Popen, str]:
    """A Ray head (`ray start --head --block`) in a process group of its own, on a free
    loopback port: (its process, its address). Stop it through its process group."""
    port = free_port()
    env = {**os.environ, **RAY_ENV}
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={port}", "--include-dashboard=false", f"--num-cpus={num_cpus}",
             f"--object-store-memory={1 << 30}", "--disable-usage-stats"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_for_port(port, head)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}:\n{log_path.read_text()[-3000:]}") from None
    return head, f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    """A Ray head started as its own process (as `ray start` on a real node would be),
    so that jobs from other driver processes can find the same warm pools."""
    head, address = start_ray_head(tmp_path_factory.mktemp("ray_head") / "ray_start.log")
    import ray

    from hybrid_infer.runtime import connect_ray

    # This test driver joins with the token; it leaves the environment right after, so
    # the Spark JVM started later (and its Python workers) never inherit it.
    os.environ["RAY_AUTH_TOKEN"] = RAY_ENV["RAY_AUTH_TOKEN"]
    try:
        connect_ray(address)
    finally:
        os.environ.pop("RAY_AUTH_TOKEN", None)
    yield address
    ray.shutdown()
    stop_group(head)


def stop_group(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """Stop a process started in a session of its own, with everything it started:
    SIGTERM to its group, SIGKILL after `timeout_s`."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_for_port(port: int, process, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError("ray start exited early")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(1.0)
                return
        time.sleep(0.5)
    raise RuntimeError(f"Ray head did not listen on {port} within {timeout} s")


@pytest.fixture(scope="session")
def spark():
    from hybrid_infer.runtime import start_spark

    token = os.environ.pop("RAY_AUTH_TOKEN", None)  # Spark's workers must not need it
    # tests/test_spark_connect.py runs whole modules through a Spark Connect server
    remote = os.environ.get("HYBRID_INFER_TEST_SPARK_REMOTE")
    try:
        session, _ = start_spark(remote=remote) if remote else start_spark("local[2]")
    finally:
        if token is not None:
            os.environ["RAY_AUTH_TOKEN"] = token
    yield session
    session.stop()


@pytest.fixture(scope="session")
def small_pool(ray_address):
    """A two-actor pool of a small, fast model, shared by the reliability tests (they
    kill its actors; it heals)."""
    from faults import SMALL_MODEL, small_settings

    from hybrid_infer.pool.registry import Pool

    pool = Pool.get_or_create(ModelSpec(SMALL_MODEL, weights="random"), small_settings())
    yield pool
    pool.stop()


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    generate_jpegs(str(directory), N_IMAGES, seed=7, min_side=120, max_side=360)
    return str(directory)


@pytest.fixture(scope="session")
def images_df(spark, image_dir):
    from hybrid_infer.sources import read_images

    return read_images(spark, image_dir).repartition(3).cache()


def reference_logits(spec: ModelSpec, paths: list[str]) -> dict[str, np.ndarray]:
    """What a user running PyTorch directly gets for each file."""
    import torch

    from hybrid_infer.decode import ImageDecoder

    module = spec.load_module()
    decoder = ImageDecoder()
    with torch.no_grad():
        batch = torch.stack([decoder(open(p, "rb").read()) for p in paths])
        logits = module(batch).numpy()
    return dict(zip(paths, logits))


@pytest.fixture(scope="session")
def expected(image_dir):
    paths = sorted(os.path.join(image_dir, name) for name in os.listdir(image_dir))
    return reference_logits(ModelSpec(TEST_MODEL, weights="random"), paths)


def local_path(uri: str) -> str:
    return uri[len("file:"):] if uri.startswith("file:") else uri


def assert_matches(rows, expected: dict, atol: float = 1e-4) -> None:
    """Every expected file exactly once, each with logits equal to the direct run."""
    paths = [local_path(row["path"]) for row in rows]
    assert sorted(paths) == sorted(expected), "rows lost or duplicated"
    for row in rows:
        assert row["error"] is None, row["error"]
        got = np.asarray(row["prediction"], dtype=np.float32)
        np.testing.assert_allclose(got, expected[local_path(row["path"])], atol=atol, rtol=0)


@pytest.fixture
def stop_new_pools(ray_address):
    """Stop the pools a test starts, leaving the session's shared pools warm."""
    from hybrid_infer.pool.registry import Pool

    before = set(Pool.names())
    yield
    for name in set(Pool.names()) - before:
        Pool.get(name).stop()
