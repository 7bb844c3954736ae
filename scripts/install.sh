#!/usr/bin/env bash
# Creates .venv/ in the project root and installs hybrid-infer with every extra the
# tests need (dev, bench, mlflow, raydp), at the exact versions in constraints.txt: the
# set CI tests. pyproject.toml itself declares ranges (see README, "Install").
# Idempotent: re-running it on an installed tree brings it back to the constraints.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
command -v java >/dev/null || { echo "install.sh: Java 17 is required by Spark (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
command -v nft >/dev/null || echo "install.sh: note: no nft: tests/test_separate_hosts.py's firewall tests (root, network namespaces) will be skipped, saying so; apt-get install nftables to run them" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=.venv/install.log
# pip's own chatter goes to the log; it is printed only when an install step fails.
run_pip() { .venv/bin/python -m pip install "$@" >>"$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }; }
: >"$log"
run_pip --upgrade "pip>=24"
run_pip -c constraints.txt -e ".[dev,bench,mlflow,raydp]"
# Every pinned package is installed at exactly its pinned version.
.venv/bin/python - <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.utils import canonicalize_name

wrong = []
for line in open("constraints.txt"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, pinned = line.partition("==")
    try:
        installed = version(canonicalize_name(name))
    except PackageNotFoundError:
        installed = "missing"
    if installed != pinned:
        wrong.append(f"{name} {installed} (constraints.txt: {pinned})")
if wrong:
    sys.exit("install.sh: installed versions differ from constraints.txt: " + ", ".join(wrong))
PY
# Prove the torch/torchvision pair imports (a mismatched build fails here, not in a test).
.venv/bin/python -c "import torch, torchvision, ray, pyspark, raydp; print(f'hybrid-infer installed: torch {torch.__version__}, torchvision {torchvision.__version__}, ray {ray.__version__}, pyspark {pyspark.__version__} (constraints.txt)')"
