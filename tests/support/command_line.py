"""`hybrid-infer` run as a user runs it: a fresh process, a home of its own, no RAY_*."""

from __future__ import annotations

import os
import subprocess
import sys

CLI = [sys.executable, "-m", "hybrid_infer.cli"]


def home_env(home, **extra) -> dict:
    """PATH, HOME, LANG (and JAVA_HOME, TMPDIR where set): nothing RAY_* unless given."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    for name in ("JAVA_HOME", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra)
    assert not [k for k in env if k.startswith("RAY_") and k not in extra]
    return env


def cli(home, *args, timeout=120, **env) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True,
                          timeout=timeout, env=home_env(home, **env))
