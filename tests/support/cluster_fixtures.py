"""Real multi-node clusters on one machine, for the cluster tests.

A Spark standalone cluster (a master and N workers started with PySpark's own
`spark-class` launcher, as `start-master.sh` / `start-worker.sh` would on real
machines) and a Ray cluster of N nodes (a head and workers, each a separate
`ray start --block` node process with its own raylet and object store), all on
127.0.0.1. Each process runs in its own session so that stopping a cluster kills its
whole process group (a Spark worker's executors, a Ray node's workers) and nothing
else: never `ray stop`, which would kill other users' clusters on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import pyspark

from runtime_env import RAY_ENV, free_port
from hybrid_infer.runtime import spark_conf_for_java17

VENV_BIN = os.path.dirname(sys.executable)
SPARK_HOME = os.path.dirname(pyspark.__file__)
from paths import SUPPORT as TESTS
from paths import REPO as WORKTREE


def node_env(**extra: str) -> dict[str, str]:
    """The environment a machine of the cluster would be configured with."""
    path = os.pathsep.join(p for p in (WORKTREE, os.environ.get("PYTHONPATH")) if p)
    # the venv's bin/ first on PATH, as an activated environment on each machine has it
    # (Ray on Spark runs `ray start` found on PATH)
    bin_path = os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")])
    return {**os.environ, **RAY_ENV, "PYTHONPATH": path, "PATH": bin_path,
            "SPARK_HOME": SPARK_HOME,
            "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, **extra}


@dataclass
class _Processes:
    """Processes started in their own sessions; `stop` ends each whole group."""

    log_dir: str
    procs: list = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(os.path.join(self.log_dir, f"{name}.log"), "wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see "
                                   f"{os.path.join(self.log_dir, name + '.log')}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        with open(os.path.join(self.log_dir, f"{name}.log"), errors="replace") as handle:
            return handle.read()[-chars:]

    def stop(self) -> None:
        """SIGTERM every group (workers before the head/master), then SIGKILL leftovers."""
        for _, proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.time() + 5
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # the group may outlive its leader
        self.procs.clear()


def _signal_group(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def wait_until(predicate, what: str, processes: _Processes, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        processes.check_alive()
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready within {timeout} s")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- Spark standalone ---------------------------------------------------------------------
@dataclass
class SparkStandalone:
    master_url: str
    ui_port: int
    processes: _Processes

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json", timeout=5) as r:
            return json.load(r)

    def alive_workers(self) -> list[dict]:
        try:
            return [w for w in self.state()["workers"] if w["state"] == "ALIVE"]
        except (OSError, ValueError):  # not up yet (its UI may serve HTML at /json first)
            return []


def start_spark_standalone(log_dir: str, workers: int = 2, cores: int = 1,
                           memory: str = "1g", ray_token: bool = True) -> SparkStandalone:
    """`spark-class ...Master` plus `workers` x `spark-class ...Worker`, on loopback.

    ray_token=False: the Spark machines hold no Ray token (their executors reach pools
    over Arrow Flight); Ray on Spark, which starts Ray nodes in Spark tasks, needs it.
    """
    processes = _Processes(log_dir)
    spark_class = os.path.join(SPARK_HOME, "bin", "spark-class")
    env = node_env(SPARK_NO_DAEMONIZE="1")
    if not ray_token:
        env.pop("RAY_AUTH_TOKEN", None)
    port, ui_port = free_port(), free_port()
    processes.start("spark-master", [
        spark_class, "org.apache.spark.deploy.master.Master",
        "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)], env)
    cluster = SparkStandalone(f"spark://127.0.0.1:{port}", ui_port, processes)
    try:
        wait_until(lambda: port_open(port) and port_open(ui_port), "Spark master", processes)
        for index in range(workers):
            work_dir = os.path.join(log_dir, f"spark-worker-{index}")
            os.makedirs(work_dir, exist_ok=True)
            processes.start(f"spark-worker-{index}", [
                spark_class, "org.apache.spark.deploy.worker.Worker", cluster.master_url,
                "--host", "127.0.0.1", "--cores", str(cores), "--memory", memory,
                "--webui-port", str(free_port()), "--work-dir", work_dir], env)
        wait_until(lambda: len(cluster.alive_workers()) == workers, "Spark workers", processes)
    except BaseException:
        processes.stop()
        raise
    return cluster


def spark_submit_argv(master_url: str, ui_port: int, script: str, *args: str) -> list[str]:
    """`spark-submit` of a Python driver to the standalone cluster (client deploy mode)."""
    conf = {**spark_conf_for_java17(), **spark_cluster_conf(ui_port)}
    argv = [os.path.join(SPARK_HOME, "bin", "spark-submit"), "--master", master_url]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    return argv + [script, *args]


def spark_cluster_conf(ui_port: int) -> dict[str, str]:
    """What a driver sets to run on the standalone cluster from this machine."""
    return {
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.port": str(ui_port),
        "spark.executor.memory": "640m",
        "spark.executor.cores": "1",
        "spark.executorEnv.PYTHONPATH": node_env()["PYTHONPATH"],
        # do not start the job before every worker's executor is up
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
        "spark.ui.showConsoleProgress": "false",
    }


# -- Ray ------------------------------------------------------------------------------
@dataclass
class RayCluster:
    address: str
    processes: _Processes
    node_resources: list[str]


def start_ray_cluster(log_dir: str, node_resources: list[str], num_cpus: int = 2,
                      num_gpus: int = 0, object_store_bytes: int = 256 << 20) -> RayCluster:
    """A head plus len(node_resources)-1 worker nodes; node i carries custom resource
    node_resources[i] (so tests can tell the nodes apart and pin work to one)."""
    processes = _Processes(log_dir)
    ray_bin = os.path.join(VENV_BIN, "ray")
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
              f"--num-gpus={num_gpus}", f"--object-store-memory={object_store_bytes}",
              "--disable-usage-stats"]
    try:
        for index, resource in enumerate(node_resources):
            resources = f"--resources={json.dumps({resource: 1})}"
            if index == 0:
                # the head keeps Ray on loopback, as the embedded runtime does
                processes.start("ray-head", [ray_bin, "start", "--head", f"--port={port}",
                                             "--include-dashboard=false", resources, *common],
                                node_env())
                wait_until(lambda: port_open(port), "Ray head", processes)
            else:
                processes.start(f"ray-node-{index}", [
                    sys.executable, os.path.join(TESTS, "ray_loopback_node.py"), "start",
                    f"--address={address}", resources, *common],
                                node_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1"))
        wait_until(lambda: _alive_ray_nodes(address) == len(node_resources), "Ray nodes",
                   processes)
    except BaseException:
        processes.stop()
        raise
    return RayCluster(address, processes, node_resources)


def _alive_ray_nodes(address: str) -> int:
    """Count alive nodes by asking the GCS from a short-lived process (this one may
    already be a driver of another cluster)."""
    code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))")
    result = subprocess.run([sys.executable, "-c", code, address], env=node_env(),
                            capture_output=True, text=True, timeout=60)
    try:
        return int(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0
