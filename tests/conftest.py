"""Fixtures of every tier: one real Ray cluster (a head on loopback) and one real Spark
session per test session, started only when a test asks for them (tests/unit never does).

Helpers live in tests/support/, which is put on sys.path here: the test modules and
the driver programs they start import them by name (`from faults import ...`).
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

SUPPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support")
sys.path.insert(0, SUPPORT)

from predictions import N_IMAGES, TEST_MODEL, reference_logits  # noqa: E402
from runtime_env import RAY_ENV, start_ray_head, stop_group  # noqa: E402

from hybrid_infer.demo_data import generate_jpegs  # noqa: E402
from hybrid_infer.models import ModelSpec  # noqa: E402

# Nothing in the tests downloads model weights (there is no network here, and CI must
# not depend on one): torch's hub cache is an empty folder of this session, and a
# pretrained torchvision name finds its file there only where a test put it.
os.environ["TORCH_HOME"] = os.path.join(
    tempfile.mkdtemp(prefix="hybrid-infer-torch-home-"), "torch")


#: The core paths, `pytest -m core`: what the Spark 3.5 lane (not README's default) runs
#: in CI (README, "Install"): packaging, the transport, both modes end to end, the udf
#: baseline, predict_batch_udf, the ML Transformer, streaming, progress, Ray on Spark,
#: and what only that lane has: the raydp mode and the RayDP cluster example (the
#: images' and the launcher's lane, test_cluster_configs.py). Spark Connect's tests
#: are in it too, for whichever lane runs -m core with a Connect server. By module
#: name, so that a module keeps its place in the selection wherever it lives under tests/.
CORE_MODULES = {
    "test_packaging.py", "test_transport.py", "test_settings.py", "test_row_answers.py",
    "test_pool_policies.py", "test_demo.py", "test_outputs.py", "test_predict_batch_udf.py",
    "test_ml_transformer.py", "test_stream.py", "test_progress.py", "test_raydp_mode.py",
    "test_ray_on_spark.py", "test_spark_connect.py", "test_cluster_configs.py",
}


@pytest.hookimpl(tryfirst=True)  # before xdist's, which names tests by their xdist group
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in CORE_MODULES:
            item.add_marker(pytest.mark.core)
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the workers collect
        schedule_for_workers(items)


# -- how pytest-xdist workers share the suite (README's command: -n 2 --dist loadgroup) ------
#: Costliest first: a worker that draws a long test late would run alone at the end.
TIER_ORDER = ("e2e", "integration", "unit")


def shares_a_module_fixture(item) -> bool:
    """Whether the test uses a module-scoped fixture (a standalone cluster, a Connect
    server, network namespaces): its module then runs in one worker, set up once."""
    return any(definition.scope == "module"
               for definitions in item._fixtureinfo.name2fixturedefs.values()
               for definition in definitions)


def schedule_for_workers(items) -> None:
    """Tests that share a module fixture form one xdist group (their module's); every
    other test is a unit of its own, so that a module of many slow independent tests
    (README's examples) spreads over the workers. Units are queued costliest first:
    by tier, and within a tier the module groups (several tests each) first."""
    grouped = {item.path for item in items if shares_a_module_fixture(item)}
    for item in items:
        if item.path in grouped:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))

    def cost_rank(item):
        tier = item.path.parent.name
        rank = TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER)
        return rank, item.path not in grouped

    items.sort(key=cost_rank)  # stable: a module's tests keep their order


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """README's `--dist loadgroup`: xdist's, by the groups above, in the order given
    (without its reordering of groups by their number of tests)."""
    if config.getvalue("dist") != "loadgroup":
        return None  # xdist's own scheduler for any other --dist
    from xdist.scheduler import LoadGroupScheduling

    config.option.loadscopereorder = False
    return LoadGroupScheduling(config, log)


@pytest.fixture(autouse=True)
def _no_weight_downloads(monkeypatch):
    from hybrid_infer.models import torchvision_spec

    def refuse(url, path, hash_prefix):
        raise OSError(f"tests never download weights ({url}): place the file in "
                      "torch's hub cache, or pass weights='random'")

    monkeypatch.setattr(torchvision_spec, "_download", refuse)


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


@pytest.fixture(scope="session")
def expected(image_dir):
    paths = sorted(os.path.join(image_dir, name) for name in os.listdir(image_dir))
    return reference_logits(ModelSpec(TEST_MODEL, weights="random"), paths)


@pytest.fixture
def stop_new_pools(ray_address):
    """Stop the pools a test starts, leaving the session's shared pools warm."""
    from hybrid_infer.pool.registry import Pool

    before = set(Pool.names())
    yield
    for name in set(Pool.names()) - before:
        Pool.get(name).stop()


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> str:
    """The package's wheel, built once per session (support/package_wheel.py), however
    many pytest-xdist workers ask for it: the first builds it, under a file lock, in the
    folder the workers share."""
    from filelock import FileLock

    from package_wheel import build_wheel

    shared = tmp_path_factory.getbasetemp()  # this run's; under xdist, this worker's...
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # ...whose parent is the run's, above every worker's
    with FileLock(str(shared / "wheel.lock")):
        built = list((shared / "wheel" / "dist").glob("*.whl"))
        if built:
            return str(built[0])
        (shared / "wheel").mkdir(exist_ok=True)
        return build_wheel(shared / "wheel")
