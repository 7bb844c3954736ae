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
from predictions import assert_matches
from runtime_env import free_port

pytestmark = pytest.mark.slow

from paths import SUPPORT as TESTS
NODES = ["node_a", "node_b"]


@pytest.fixture(scope="module")
def cluster_logs(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cluster-logs"))


@pytest.fixture(scope="module")
def spark_cluster(cluster_logs):
    cluster = start_spark_standalone(cluster_logs, workers=2, cores=1, ray_token=False)
    yield cluster
    cluster.processes.stop()


@pytest.fixture(scope="module")
def ray_cluster(cluster_logs):
    # one logical GPU per node: Ray schedules by it as on GPU machines (the actors ask
    # for one each and run on the CPU: cluster_driver.pool_settings). 4 CPU slots per node: room for
    # the GPU pool's actor and two CPU-pool actors.
    cluster = start_ray_cluster(cluster_logs, NODES, num_cpus=4, num_gpus=1)
    yield cluster
    cluster.processes.stop()


DRIVER = os.path.join(TESTS, "cluster_driver.py")


def run_driver(*args: str, submit_to=None, timeout: float = 300) -> dict:
    """Run cluster_driver.py, with spark-submit to `submit_to` (a SparkStandalone)."""
    argv = ([sys.executable, DRIVER, *args] if submit_to is None else
            spark_submit_argv(submit_to.master_url, free_port(), DRIVER, *args))
    result = subprocess.run(argv, env=node_env(), capture_output=True, text=True,
                            timeout=timeout)
    # Spark's INFO lines (shutdown hooks...) would push the error out of the message
    errors = "\n".join(line for line in (result.stdout + result.stderr).splitlines()
                       if " INFO " not in line)
    assert result.returncode == 0, errors[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cli(*args: str, timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, "-m", "hybrid_infer.cli", *args], env=node_env(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def job(spark_cluster, ray_cluster, image_dir, tmp_path_factory):
    """One hybrid job, submitted with spark-submit: 4 Spark partitions on 2 workers ->
    the default pool (one actor per GPU) on 2 Ray nodes of one GPU each."""
    output = str(tmp_path_factory.mktemp("cluster-job") / "predictions.parquet")
    report = run_driver("job", "--ray-address", ray_cluster.address, "--images", image_dir,
                        "--output", output, submit_to=spark_cluster)
    report["rows"] = pq.read_table(output).to_pylist()
    return report


def test_job_on_standalone_spark_and_two_ray_nodes(job, spark_cluster, expected):
    assert job["master"] == spark_cluster.master_url
    assert_matches(job["rows"], expected)
    # Spark: one executor per worker, and both ran tasks of the job
    executors = job["executors"]
    assert len(executors) == 2 and len({e["host_port"] for e in executors}) == 2, executors
    assert all(e["tasks"] > 0 for e in executors), executors
    # Ray: one actor per GPU, so one on each node, and both served rows
    actors = job["actors"]
    assert sorted(a["node"][0] for a in actors) == NODES, actors
    assert all(a["rows"] > 0 for a in actors), actors
    assert sum(a["rows"] for a in actors) == len(expected)
    assert all(a["model_loads"] == 1 for a in actors)


def weights_by_node(actors) -> dict[str, set[tuple[str, int]]]:
    """node -> where its actors' weights are: (object-store mapping, offset in it).

    Asserts on the way that every parameter byte of every actor is in its node's
    shared-memory object store (none in a private heap: no per-actor copy)."""
    by_node = collections.defaultdict(set)
    for actor in actors:
        storage = actor["storage"]
        backing = storage["backing"]
        assert list(backing.values()) == [storage["param_bytes"]], backing
        (mapping,) = backing
        assert mapping.startswith("/dev/shm/") or "plasma" in mapping, mapping
        location = actor["weights_at"]
        assert location["file"] == mapping.split()[0], (location, mapping)
        by_node[actor["node"][0]].add((location["file"], location["offset"]))
    return by_node


@pytest.fixture(scope="module")
def cpu_pool(ray_cluster):
    """A CPU pool (no GPU per actor) started with the CLI, as an operator would."""
    printed = run_cli("pool", "start", "--json", "--weights", "random", "--device", "cpu", "--num-actors", "2",
                      "--batch-size", "8", "--ray-address", ray_cluster.address)
    status = json.loads(printed)
    assert len(status["actors"]) == 2
    return status["name"]


@pytest.fixture(scope="module")
def scale_cpu_pool(cpu_pool, ray_cluster):
    """`hybrid-infer pool scale`, then where the pool's actors are."""
    def scale(num_actors: int) -> dict:
        printed = run_cli("pool", "scale", "--name", cpu_pool, "--num-actors", str(num_actors),
                          "--ray-address", ray_cluster.address)
        assert printed.strip() == f"{cpu_pool}: {num_actors} actors"
        return run_driver("inspect", "--pool", cpu_pool, "--ray-address", ray_cluster.address)
    return scale


def test_cpu_pool_spreads_over_nodes_and_scales_up_and_down(scale_cpu_pool):
    start = scale_cpu_pool(2)  # no change: the pool as started
    assert sorted(a["node"][0] for a in start["actors"]) == NODES, "SPREAD over CPU slots"
    up = scale_cpu_pool(4)
    placement = collections.Counter(a["node"][0] for a in up["actors"])
    assert placement == {"node_a": 2, "node_b": 2}, placement
    # scaling up keeps the running actors warm: they are not restarted
    assert {a["actor_id"] for a in start["actors"]} <= {a["actor_id"] for a in up["actors"]}
    down = scale_cpu_pool(1)
    assert len(down["actors"]) == 1
    assert down["actors"][0]["actor_id"] in {a["actor_id"] for a in up["actors"]}


def test_one_weight_copy_per_node(scale_cpu_pool):
    by_node = weights_by_node(scale_cpu_pool(4)["actors"])  # two actors on each node
    assert sorted(by_node) == NODES
    # the two actors of a node read the same bytes: one copy per node, not per actor
    assert all(len(places) == 1 for places in by_node.values()), by_node
    # and each node reads its own object store, not the other node's
    (file_a, _), (file_b, _) = (next(iter(by_node[n])) for n in NODES)
    assert file_a != file_b, by_node
