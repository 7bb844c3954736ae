"""Run a command in its own process group under a hard deadline.

A contender that hangs without printing anything must not hang the benchmark: the
command runs in a new session, its output is read by a thread, and the deadline is
enforced by the waiting thread itself. At the deadline the whole process group (and
any descendant that left it) gets SIGTERM, then SIGKILL after a grace period; the
Spark JVM, Ray's GCS and raylet and their workers all go with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

import psutil


@dataclass
class Finished:
    exit_code: int | None
    timed_out: bool
    seconds: float


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_tree(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group and every descendant, SIGKILL what is left after
    `grace_s`. Only processes this command started are touched."""
    victims = [*descendants(process.pid)]
    try:
        victims.insert(0, psutil.Process(process.pid))
    except psutil.NoSuchProcess:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for victim in victims:
            try:
                victim.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, victims = psutil.wait_procs(victims, timeout=grace_s)
        if not victims:
            break
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass


def run_with_deadline(command: list[str], *, env: dict, log_path: str, timeout_s: float,
                      on_line: Callable[[str], None] | None = None,
                      on_start: Callable[[int], None] | None = None) -> Finished:
    """Run `command`, teeing its output to `log_path` (and each line to `on_line`);
    kill its whole tree at `timeout_s`. `on_start(pid)` runs once it has started."""
    started = time.time()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        if on_start:
            on_start(process.pid)

        def pump() -> None:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if on_line:
                    on_line(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        # Its own children (Ray's, Spark's) may outlive it and hold the pipe open.
        kill_tree(process)
        reader.join(timeout=10)
        if timed_out:
            log.write(f"\n[harness] timed out after {timeout_s:g} s: killed its process "
                      "group and every descendant\n")
    return Finished(process.returncode, timed_out, time.time() - started)
