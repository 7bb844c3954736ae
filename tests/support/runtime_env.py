"""The environment of the test Ray cluster and of a user's shell, shared by the tests,
their fixtures and the driver programs they start (which import this module too).

The processes that join the test Ray cluster (the head, the test driver, second drivers
the tests start) get `RAY_ENV` explicitly: loopback addresses and one token for Ray's
token auth. Spark's JVM and Python workers do NOT get the token: Spark tasks reach pools
over Arrow Flight, as a user's would, with no Ray token. (One token per test session:
every import of this module, in the tests' driver subprocesses too, finds it under a
name Ray does not read.)
"""

from __future__ import annotations

import os
import secrets
import socket
import signal
import subprocess
import sys
import time

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_ray_head(args: list[str], *, env: dict, port: int,
                    log_path=None) -> subprocess.Popen:
    """`ray start --head --block --port=<port> <args>` (the venv's ray) in a process
    group of its own, its output to `log_path` (or nowhere). Stop it with stop_group."""
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    argv = [ray_bin, "start", "--head", "--block", f"--port={port}", *args]
    if log_path is None:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    with open(log_path, "w") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def start_ray_head(log_path, num_cpus: int = 8) -> tuple[subprocess.Popen, str]:
    """The tests' Ray head (token auth, RAY_ENV) on a free loopback port: (its process,
    its address). Stop it with stop_group."""
    port = free_port()
    head = launch_ray_head(
        ["--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--num-cpus={num_cpus}",
         f"--object-store-memory={1 << 30}", "--disable-usage-stats"],
        env={**os.environ, **RAY_ENV}, port=port, log_path=log_path)
    try:
        wait_for_port(port, head)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}:\n{log_path.read_text()[-3000:]}") from None
    return head, f"127.0.0.1:{port}"


def wait_for_port(port: int, process, timeout: float = 60) -> None:
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


def free_port_pair() -> int:
    """A port p with p and p+1 free now (the test binds them at once)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65535:
            with socket.socket() as other:
                try:
                    other.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no two free consecutive ports on 127.0.0.1")


def stop_group(process: subprocess.Popen, timeout_s: float = 5) -> None:
    """Stop a process started in a session of its own, with everything it started:
    SIGTERM to its group, SIGKILL after `timeout_s` (a `ray start --block` head takes
    30 s and more to stop on SIGTERM; nothing the tests check needs it graceful)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
