"""Issue 5: Ray on Spark. cluster_configs/ray_on_spark.py, submitted with spark-submit
to a local standalone cluster, starts Ray worker nodes inside Spark tasks
(`ray.util.spark.setup_ray_cluster`), runs the hybrid job on them, and writes the
predictions, which must equal direct PyTorch row for row.
"""

from __future__ import annotations

import json
import os
import subprocess

import pyarrow.parquet as pq
import pytest

from cluster_fixtures import WORKTREE, node_env, spark_submit_argv, start_spark_standalone
from predictions import TEST_MODEL, assert_matches
from runtime_env import free_port

pytestmark = pytest.mark.slow

# setup_ray_cluster always starts a Ray Client server, which needs ray[client] (grpcio).
pytest.importorskip("grpc", reason="Ray on Spark needs ray[client] (grpcio) installed")

EXAMPLE = os.path.join(WORKTREE, "cluster_configs", "ray_on_spark.py")


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    # 2 cores per worker: one task slot per worker hosts a Ray node while the cluster
    # is up, the other runs the inference job's tasks
    cluster = start_spark_standalone(str(tmp_path_factory.mktemp("ros-logs")), workers=2,
                                     cores=2, memory="2g")
    yield cluster
    cluster.processes.stop()


def test_ray_on_spark_example_runs_the_job(spark_cluster, image_dir, expected, tmp_path):
    output = str(tmp_path / "predictions.parquet")
    argv = spark_submit_argv(spark_cluster.master_url, free_port(), EXAMPLE, image_dir,
                             output, "--model", TEST_MODEL, "--weights", "random",
                              "--ray-nodes", "2")
    # Ray on Spark puts its nodes on the machine's address, as on real machines: the
    # driver must not keep Ray on loopback (the executors' job tasks still join the
    # head at the address setup_ray_cluster returns)
    env = node_env()
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=420)
    errors = "\n".join(line for line in result.stderr.splitlines() if " INFO " not in line)
    assert result.returncode == 0, errors[-6000:]
    assert_matches(pq.read_table(output).to_pylist(), expected)
    # Ray's autoscaler also prints to stdout: take the example's own JSON line
    (line,) = [l for l in result.stdout.splitlines() if l.startswith('{"ray_address"')]
    ran = json.loads(line)
    # the head on the driver plus 2 worker nodes inside Spark tasks; one actor on each
    assert ran["ray_nodes"] == 3 and ran["actor_nodes"] == 2, ran
