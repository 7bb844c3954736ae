"""Spark and the pool on separate network hosts (issue 18, items 1-4).

Three hosts, each a network namespace joined to the others by veth links through a
switch (tests/support/netns_hosts.py): `pool-a` runs the Ray head (and the pool's manager),
`pool-b` a Ray worker node, `spark` a local Spark whose Python cannot import ray. The
Spark host gets the pool's PoolAddress (from pool-a, as a file) and nothing else. A
firewall on each pool host drops everything the Spark host sends except
`flight_port_range`. Every job's rows are checked row for row.

Skipped, saying why, without root or `ip`; the firewall tests need `nft` (Debian's
nftables). The namespaces are deleted whatever happens. Figures print as FIGURES lines
(-s).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from runtime_env import RAY_ENV
from netns_hosts import Topology, firewall_reason, unavailable_reason

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SUPPORT = os.path.join(ROOT, "tests", "support")  # the roles run from there
PORTS = (40100, 40109)
SEED = 181  # the plain pool's; TLS gets its own
pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=str(unavailable_reason()))


def figures(name: str, **values) -> None:
    print(f"FIGURES {json.dumps({'test': name, **values})}")


class Role:
    """A separate_hosts_roles.py process on one host, driven by JSON lines."""

    def __init__(self, process: subprocess.Popen, name: str, timeout_s: float = 300):
        self.process, self.name = process, name
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._answer(timeout_s)  # ready

    def _pump(self) -> None:
        for line in self.process.stdout:
            if line.startswith("@@ "):
                self._lines.put(json.loads(line[3:]))
        self._lines.put({"error": f"the {self.name} role exited"})

    def send(self, op: str, **request) -> None:
        self.process.stdin.write(json.dumps({"op": op, **request}) + "\n")
        self.process.stdin.flush()

    def _answer(self, timeout_s: float):
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"the {self.name} role did not answer within {timeout_s} s")

    def result(self, timeout_s: float = 600):
        answer = self._answer(timeout_s)
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {answer['error']}\n{answer.get('traceback', '')}")
        return answer["ok"]

    def call(self, op: str, timeout_s: float = 600, **request):
        self.send(op, **request)
        return self.result(timeout_s)


class Hosts:
    def __init__(self, topology: Topology, work):
        self.topology, self.work = topology, work
        self.ip = topology.hosts
        self.pool: Role | None = None
        self.spark: Role | None = None
        self.cleanups: list = []

    def start(self) -> None:
        python = sys.executable
        ray_bin = os.path.join(os.path.dirname(python), "ray")
        ray_env = {**os.environ, **RAY_ENV,
                   "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",  # Ray's flag for multi-node
                   # a link may stay down for a job's length: Ray keeps the node
                   "RAY_health_check_failure_threshold": "100"}
        head_ip, worker_ip = self.ip["pool-a"], self.ip["pool-b"]
        # a temp dir of its own: Ray's "current cluster" file there, not in /tmp/ray
        temp_dir = tempfile.mkdtemp(prefix="ray-hosts-", dir="/tmp")  # short: sockets
        self.cleanups.append(lambda: shutil.rmtree(temp_dir, ignore_errors=True))
        # two logical GPUs per pool host (test_logical_gpus...); CPU pools take none
        common = ["--block", "--num-cpus=1", "--num-gpus=2", f"--object-store-memory={1 << 29}",
                  "--disable-usage-stats", f"--temp-dir={temp_dir}"]
        logs = {name: open(self.work / f"{name}.log", "w") for name in ("head", "worker",
                                                                        "pool", "spark")}
        self.topology.popen("pool-a", [ray_bin, "start", "--head", f"--node-ip-address={head_ip}",
                                       "--port=6379", "--include-dashboard=false", *common],
                            env=ray_env, stdout=logs["head"], stderr=subprocess.STDOUT)
        self._wait_listening("pool-b", head_ip, 6379)
        self.topology.popen("pool-b", [ray_bin, "start", f"--address={head_ip}:6379",
                                       f"--node-ip-address={worker_ip}", *common],
                            env=ray_env, stdout=logs["worker"], stderr=subprocess.STDOUT)
        roles = os.path.join(SUPPORT, "separate_hosts_roles.py")
        self.pool = Role(self.topology.popen(
            "pool-a", [python, roles, "pool", f"{head_ip}:6379"], env=ray_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs["pool"], text=True),
            "pool")
        blocker = self.work / "no_ray"
        (blocker / "ray").mkdir(parents=True)
        (blocker / "ray" / "__init__.py").write_text(
            "raise ImportError('no Ray on the Spark host')\n")
        spark_env = {key: value for key, value in os.environ.items()
                     if not key.startswith("RAY_")}
        spark_env.update(PYTHONPATH=f"{blocker}:{SUPPORT}", SPARK_LOCAL_IP=self.ip["spark"],
                         PYSPARK_PYTHON=python)
        self.spark = Role(self.topology.popen(
            "spark", [python, roles, "spark"], env=spark_env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=logs["spark"], text=True), "spark")

    def _wait_listening(self, host: str, ip: str, port: int, timeout_s: float = 120) -> None:
        probe = (f"import socket, time\nfor _ in range({int(timeout_s * 2)}):\n"
                 f"    try: socket.create_connection(({ip!r}, {port}), 1).close(); break\n"
                 "    except OSError: time.sleep(0.5)\nelse: raise SystemExit(1)\n")
        self.topology.run(host, [sys.executable, "-c", probe])

    def firewall(self, open_ports) -> None:
        for host in ("pool-a", "pool-b"):
            self.topology.firewall(host, "spark", open_ports)

    def job(self, count: int, name: str, seed: int = SEED, **options):
        out = self.work / f"{name}.json"
        answer = self.spark.call("run", address_file=str(self.work / f"pool-{seed}.pickle"),
                                 count=count, seed=3, out=str(out), **options)
        return answer, json.loads(out.read_text())


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    topology = Topology(["spark", "pool-a", "pool-b"])
    try:
        hosts = Hosts(topology, tmp_path_factory.mktemp("hosts"))
        hosts.start()
        yield hosts
    finally:
        topology.close()
        for cleanup in hosts.cleanups if "hosts" in locals() else ():
            cleanup()


def start_pool(hosts: Hosts, seed: int, **settings) -> dict:
    return hosts.pool.call("start", seed=seed, address_file=str(
        hosts.work / f"pool-{seed}.pickle"), settings={
        "num_actors": 2, "flight_port_range": list(PORTS), "place_timeout_s": 120,
        "device": "cpu", "num_gpus_per_actor": 0, **settings})


@pytest.fixture(scope="module")
def seed_pool(hosts) -> dict:
    """The pool most tests use (SEED, an actor on each pool host), started once: behind
    the firewall open only for PORTS where nft is installed (the first test checks it),
    on open links where it is not (the firewall tests are then skipped, not the rest)."""
    if firewall_reason() is None:
        hosts.firewall(PORTS)
    pool = start_pool(hosts, SEED)
    (hosts.manager_host,) = [h for h in ("pool-a", "pool-b")
                             if hosts.ip[h] == host_of(pool["manager"])]
    return pool


def assert_every_row_once(rows, count: int) -> None:
    paths = [row[0] for row in rows]
    assert len(paths) == count == len(set(paths)), "rows lost or duplicated"
    assert [row[2] for row in rows] == [None] * count, rows[:3]


def host_of(uri: str) -> str:
    return uri.split("://", 1)[1].rsplit(":", 1)[0]


@pytest.mark.skipif(firewall_reason() is not None, reason=str(firewall_reason()))
def test_through_a_firewall_open_only_for_the_port_range_a_job_uses_both_hosts(hosts,
                                                                               seed_pool):
    pool = seed_pool
    ips = {hosts.ip["pool-a"], hosts.ip["pool-b"]}
    assert {host_of(uri) for uri in pool["actors"]} == ips  # one actor per pool host
    assert host_of(pool["manager"]) in ips
    for uri in (pool["manager"], *pool["actors"]):
        assert PORTS[0] <= int(uri.rsplit(":", 1)[1]) <= PORTS[1]
    before = {a["endpoint"]: a["rows"] for a in hosts.pool.call("actors", seed=SEED)["actors"]}
    answer, rows = hosts.job(40, "two-hosts")
    assert_every_row_once(rows, 40)
    after = hosts.pool.call("actors", seed=SEED)["actors"]
    assert all(a["rows"] > before[a["endpoint"]] for a in after), after  # both served
    assert hosts.topology.dropped("pool-a") + hosts.topology.dropped("pool-b") == 0
    hosts.reference = {row[0]: row[1] for row in rows}
    hosts.two_host_seconds = answer["seconds"]
    figures("two_hosts", job_seconds=answer["seconds"], rows=40)


@pytest.mark.skipif(firewall_reason() is not None, reason=str(firewall_reason()))
def test_with_the_port_range_closed_a_job_fails_within_seconds_naming_the_setting(hosts, seed_pool):
    hosts.firewall(None)
    try:
        started = time.perf_counter()
        with pytest.raises(RuntimeError) as caught:
            hosts.job(4, "closed")
        seconds = time.perf_counter() - started
        dropped = hosts.topology.dropped("pool-a") + hosts.topology.dropped("pool-b")
    finally:
        hosts.firewall(PORTS)
    text = str(caught.value)
    assert "flight_port_range" in text, text[:3000]
    assert hosts.ip["pool-a"] in text or hosts.ip["pool-b"] in text, text[:3000]
    assert dropped > 0  # the firewall, not a dead pool, failed the job
    assert seconds < 120
    figures("range_closed", fails_after_s=round(seconds, 1))


def rows_by_host(hosts: Hosts, seed: int = SEED) -> dict[str, int]:
    counted: dict[str, int] = {}
    for actor in hosts.pool.call("actors", seed=seed)["actors"]:
        counted[actor["host"]] = counted.get(actor["host"], 0) + actor["rows"]
    return counted


def job_with_links_cut(hosts: Hosts, cut: list[str], count: int, name: str,
                       cut_after: int = 16):
    """Run a job; once the pool has answered `cut_after` of its rows, take the links of
    the `cut` hosts down until the job ends (then up again). Returns (the Spark role's
    answer or its RuntimeError, seconds from the cut to the job's end)."""
    before = sum(rows_by_host(hosts).values())
    hosts.spark.send("run", address_file=str(hosts.work / f"pool-{SEED}.pickle"),
                     count=count, seed=3, out=str(hosts.work / f"{name}.json"))
    deadline = time.monotonic() + 300
    while sum(rows_by_host(hosts).values()) - before < cut_after:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.1)
    for host in cut:
        hosts.topology.link(host, up=False)
    cut_at = time.monotonic()
    try:
        try:
            answer = hosts.spark.result(timeout_s=300)
        except RuntimeError as exc:
            answer = exc
        return answer, time.monotonic() - cut_at
    finally:
        for host in cut:
            hosts.topology.link(host, up=True)


def test_a_pool_host_losing_its_link_mid_job_loses_no_row_and_comes_back(hosts, seed_pool):
    """The pool host without the manager (an actor's) loses its link mid-job: every row
    comes back once, through the other host's actor; with the link back, the next job
    uses both hosts."""
    count = 80
    cut = "pool-b" if hosts.manager_host == "pool-a" else "pool-a"
    answer, after_cut_s = job_with_links_cut(hosts, [cut], count, "cut")
    assert not isinstance(answer, Exception), answer
    rows = json.loads((hosts.work / "cut.json").read_text())
    assert_every_row_once(rows, count)
    for row_id, prediction, _ in rows:
        if row_id in getattr(hosts, "reference", {}):
            assert max(abs(a - b) for a, b in zip(prediction, hosts.reference[row_id])) < 1e-4
    figures("lost_link", cut=cut, job_seconds=answer["seconds"],
            finished_after_cut_s=round(after_cut_s, 1), rows=count, rows_lost=0,
            rows_duplicated=0, two_host_job_seconds_40_rows=getattr(hosts, "two_host_seconds",
                                                                    None))

    # the link is back: the pool (healed or not) serves from both hosts again
    deadline = time.monotonic() + 240
    while True:
        address = hosts.pool.call("address", seed=SEED,
                                  address_file=str(hosts.work / f"pool-{SEED}.pickle"))
        if {host_of(uri) for uri in address["actors"]} == {hosts.ip["pool-a"],
                                                            hosts.ip["pool-b"]}:
            break
        assert time.monotonic() < deadline, f"one host only after the link came back: {address}"
        time.sleep(1)
    before = rows_by_host(hosts)
    answer, rows = hosts.job(20, "link-back")
    assert_every_row_once(rows, 20)
    after = rows_by_host(hosts)
    assert all(after.get(ip, 0) > before.get(ip, 0) for ip in
               (hosts.ip["pool-a"], hosts.ip["pool-b"])), (before, after)
    figures("link_back", job_seconds=answer["seconds"], rows=20,
            replaced_actors=hosts.pool.call("actors", seed=SEED)["replaced"])


def test_the_managers_host_cut_mid_job_the_job_goes_on_with_the_other_hosts_actor(hosts, seed_pool):
    count = 60
    cut = hosts.manager_host
    answer, after_cut_s = job_with_links_cut(hosts, [cut], count, "manager-cut")
    assert not isinstance(answer, Exception), answer
    assert_every_row_once(json.loads((hosts.work / "manager-cut.json").read_text()), count)
    figures("manager_host_cut", cut=cut, job_seconds=answer["seconds"],
            finished_after_cut_s=round(after_cut_s, 1), rows=count)


def test_job_time_on_two_pool_hosts_against_one(hosts, seed_pool):
    """A figure, not a speed claim: every "host" shares this machine's CPUs."""
    count = 120
    two, rows = hosts.job(count, "two-hosts-warm", resize=160)
    assert_every_row_once(rows, count)
    hosts.pool.call("scale", seed=SEED, num_actors=1)
    hosts.pool.call("address", seed=SEED, address_file=str(hosts.work / f"pool-{SEED}.pickle"))
    one, rows = hosts.job(count, "one-host", resize=160)
    assert_every_row_once(rows, count)
    assert len([n for n in rows_by_host(hosts).values()]) == 1
    figures("two_hosts_against_one", rows=count, two_hosts_s=two["seconds"],
            one_host_s=one["seconds"])


def test_with_every_pool_host_cut_the_job_fails_clearly(hosts, seed_pool):
    answer, after_cut_s = job_with_links_cut(hosts, ["pool-a", "pool-b"], 60, "all-cut")
    assert isinstance(answer, RuntimeError), answer
    text = str(answer)
    assert "PoolError" in text and "do not answer" in text, text[:2000]
    # the target is 10 s (STALL_S + connect_timeout_s, 4 s each); the bound allows a
    # loaded machine (every "host" shares its CPUs): the figure is printed
    assert after_cut_s < 60
    figures("every_pool_host_cut", fails_after_cut_s=round(after_cut_s, 1))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to make certificates")
def test_tls_across_hosts(hosts, seed_pool):
    """A certificate naming both pool hosts' addresses: a job succeeds; a client that
    verifies against another certificate, or speaks plain text, is refused."""
    hosts.pool.call("stop", seed=SEED)  # its CPUs: one per pool host
    ips = f"IP:{hosts.ip['pool-a']},IP:{hosts.ip['pool-b']}"
    cert, key, other = (hosts.work / name for name in ("pool.crt", "pool.key", "other.crt"))
    for made, subject in ((cert, "/CN=hybrid-infer-pool"), (other, "/CN=another-ca")):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", subject, "-addext", f"subjectAltName={ips}", "-keyout",
                        str(key if made == cert else hosts.work / "other.key"),
                        "-out", str(made)], check=True, capture_output=True)
    seed = SEED + 1
    pool = start_pool(hosts, seed, tls_cert=str(cert), tls_key=str(key))
    assert all(uri.startswith("grpc+tls://") for uri in (pool["manager"], *pool["actors"]))
    answer, rows = hosts.job(8, "tls", seed=seed)
    assert_every_row_once(rows, 8)
    address_file = str(hosts.work / f"pool-{seed}.pickle")
    for index in range(2):
        assert hosts.spark.call("ping", address_file=address_file, uri_index=index) == "ok"
        refused = hosts.spark.call("ping", address_file=address_file, uri_index=index,
                                   cert_file=str(other))
        assert "certificate verify failed" in refused, refused
        plain = hosts.spark.call("ping", address_file=address_file, uri_index=index,
                                 scheme="grpc+tcp")
        assert plain != "ok" and "Flight" in plain, plain
        print(f"plain-text client refused: {plain[:300]}")
    figures("tls", job_seconds=answer["seconds"], rows=8)
    hosts.pool.call("stop", seed=seed)


def test_logical_gpus_one_actor_each_spread_over_both_hosts_all_serving(hosts):
    """Two logical GPUs per pool host (Ray's --num-gpus; the actors compute on the CPU):
    one actor per GPU, each seeing only its own in CUDA_VISIBLE_DEVICES, two per host,
    and a job's rows reach all four."""
    seed = SEED + 2
    start_pool(hosts, seed, num_actors=4, num_gpus_per_actor=1, num_cpus_per_actor=0)
    inside = hosts.pool.call("gpus", seed=seed)
    assert all(len(a["gpu_ids"]) == 1 and a["cuda_visible_devices"] == a["gpu_ids"][0]
               for a in inside), inside
    per_host: dict[str, set] = {}
    for actor in inside:
        per_host.setdefault(actor["host"], set()).add(actor["cuda_visible_devices"])
    assert per_host == {hosts.ip["pool-a"]: {"0", "1"}, hosts.ip["pool-b"]: {"0", "1"}}
    answer, rows = hosts.job(40, "gpus", seed=seed)
    assert_every_row_once(rows, 40)
    served = hosts.pool.call("actors", seed=seed)["actors"]
    assert len(served) == 4 and all(a["rows"] > 0 for a in served), served
    figures("logical_gpus", job_seconds=answer["seconds"], rows=40,
            rows_per_actor=sorted(a["rows"] for a in served))
