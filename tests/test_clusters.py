"""Issue 5: a real Spark standalone cluster beside a real two-node Ray cluster.

Both run on loopback as separate processes started the way they are on real machines
(tests/cluster_fixtures.py). A driver program (tests/cluster_driver.py) submits the
hybrid job against them; the tests check its output row for row, where the work ran,
the one copy of the weights per node, and scaling with `hybrid-infer pool scale`.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from cluster_fixtures import (node_env, spark_submit_argv, start_ray_cluster,
                              start_spark_standalone)
from conftest import assert_matches, free_port

pytestmark = pytest.mark.slow

TESTS = os.path.dirname(os.path.abspath(__file__))
NODES = ["node_a", "node_b"]


@pytest.fixture(scope="module")
def cluster_logs(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cluster-logs"))


@pytest.fixture(scope="module")
def spark_cluster(cluster_logs):
    cluster = start_spark_standalone(cluster_logs, workers=2, cores=1)
    yield cluster
    cluster.processes.stop()


@pytest.fixture(scope="module")
def ray_cluster(cluster_logs):
    cluster = start_ray_cluster(cluster_logs, NODES)
    yield cluster
    cluster.processes.stop()


DRIVER = os.path.join(TESTS, "cluster_driver.py")


def run_driver(*args: str, submit_to=None, timeout: float = 300) -> dict:
    """Run cluster_driver.py, with spark-submit to `submit_to` (a SparkStandalone)."""
    argv = ([sys.executable, DRIVER, *args] if submit_to is None else
            spark_submit_argv(submit_to.master_url, free_port(), DRIVER, *args))
    result = subprocess.run(argv, env=node_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cli(*args: str, timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, "-m", "hybrid_infer.cli", *args], env=node_env(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def job(spark_cluster, ray_cluster, image_dir, tmp_path_factory):
    """One hybrid job, submitted with spark-submit: 4 Spark partitions on 2 workers ->
    a 2-actor pool on 2 Ray nodes."""
    output = str(tmp_path_factory.mktemp("cluster-job") / "predictions.parquet")
    report = run_driver("job", "--ray-address", ray_cluster.address, "--images", image_dir,
                        "--output", output, "--num-actors", "2", submit_to=spark_cluster)
    report["rows"] = pq.read_table(output).to_pylist()
    return report


def test_job_on_standalone_spark_and_two_ray_nodes(job, spark_cluster, expected):
    assert job["master"] == spark_cluster.master_url
    assert_matches(job["rows"], expected)
    # Spark: one executor per worker, and both ran tasks of the job
    executors = job["executors"]
    assert len(executors) == 2 and len({e["host_port"] for e in executors}) == 2, executors
    assert all(e["tasks"] > 0 for e in executors), executors
    # Ray: SPREAD put one actor on each node, and both served rows
    actors = job["actors"]
    assert sorted(a["node"][0] for a in actors) == NODES, actors
    assert all(a["rows"] > 0 for a in actors), actors
    assert sum(a["rows"] for a in actors) == len(expected)
    assert all(a["model_loads"] == 1 for a in actors)


def weight_mappings(actors) -> dict[str, set[str]]:
    """node -> the shared-memory mappings its actors' parameters live in.

    Asserts on the way that every parameter byte of every actor is in one mapping of
    its node's object store (none in a private heap: no per-actor copy)."""
    by_node = collections.defaultdict(set)
    for actor in actors:
        storage = actor["storage"]
        backing = storage["backing"]
        assert list(backing.values()) == [storage["param_bytes"]], backing
        (mapping,) = backing
        assert mapping.startswith("/dev/shm/") or "plasma" in mapping, mapping
        by_node[actor["node"][0]].update(backing)
    return by_node


def test_one_weight_copy_per_node(job, ray_cluster, run_scale):
    # two actors per node after scaling to 4 (see run_scale): they share one copy
    report = run_scale(4)
    by_node = weight_mappings(report["actors"])
    assert sorted(by_node) == NODES
    assert all(len(mappings) == 1 for mappings in by_node.values()), by_node
    node_a, node_b = (by_node[n] for n in NODES)
    assert node_a != node_b, "both nodes read the same mapping: not one copy per node"


@pytest.fixture(scope="module")
def run_scale(job, ray_cluster):
    def scale(num_actors: int) -> dict:
        printed = run_cli("pool", "scale", "--name", job["pool"],
                          "--num-actors", str(num_actors), "--ray-address", ray_cluster.address)
        assert printed.strip() == f"{job['pool']}: {num_actors} actors"
        return run_driver("inspect", "--pool", job["pool"], "--ray-address", ray_cluster.address)
    return scale


def test_scale_up_and_down_spreads_across_nodes(job, run_scale):
    up = run_scale(4)
    placement = collections.Counter(a["node"][0] for a in up["actors"])
    assert placement == {"node_a": 2, "node_b": 2}, placement
    # the first two actors are kept warm: scaling up does not reload them
    kept = {a["actor_id"] for a in job["actors"]}
    assert kept <= {a["actor_id"] for a in up["actors"]}
    down = run_scale(1)
    assert len(down["actors"]) == 1
    assert down["actors"][0]["actor_id"] in {a["actor_id"] for a in up["actors"]}
