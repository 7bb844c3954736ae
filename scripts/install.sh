#!/usr/bin/env bash
# Usage: bash scripts/install.sh [spark4|spark35]   (default: spark4)
#
# Creates a virtualenv in the project root and installs hybrid-infer with every extra
# the lane's tests need, at the exact versions of the lane's constraints file: the set
# CI tests. pyproject.toml itself declares ranges (see README, "Install").
#   spark4   Spark 4 (latest 4.x), numpy 2, current pyarrow, Spark Connect's client;
#            constraints-spark4.txt; extras dev, bench, mlflow, connect (no raydp: RayDP
#            has no Spark 4 release)
#   spark35  Spark 3.5, numpy 1.26, pyarrow 19, raydp; constraints.txt; extras dev,
#            bench, mlflow, raydp
# The default lane (spark4) installs into .venv/, the other one into .venv-<lane>/
# (.venv-spark35/; VENV=DIR overrides), so both can sit side by side.
# Idempotent: re-running it on an installed tree brings it back to the constraints.
set -euo pipefail
cd "$(dirname "$0")/.."
DEFAULT_LANE=spark4
lane=${1:-$DEFAULT_LANE}
case "$lane" in
  spark4)  constraints=constraints-spark4.txt; extras=dev,bench,mlflow,connect; extra_import=pyspark.sql.connect.session ;;
  spark35) constraints=constraints.txt;        extras=dev,bench,mlflow,raydp;   extra_import=raydp ;;
  *) echo "install.sh: unknown lane '$lane': use spark4 or spark35" >&2; exit 2 ;;
esac
if [ "$lane" = "$DEFAULT_LANE" ]; then venv=${VENV:-.venv}; else venv=${VENV:-.venv-$lane}; fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
command -v java >/dev/null || { echo "install.sh: Java 17 is required by Spark (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
command -v nft >/dev/null || echo "install.sh: note: no nft: tests/e2e/test_separate_hosts.py's firewall tests (root, network namespaces) will be skipped, saying so; apt-get install nftables to run them" >&2
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
log=$venv/install.log
# pip's own chatter goes to the log; it is printed only when an install step fails.
run_pip() { "$venv/bin/python" -m pip install "$@" >>"$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }; }
: >"$log"
run_pip --upgrade "pip>=24"
run_pip -c "$constraints" -e ".[$extras]"
# Every pinned package is installed at exactly its pinned version.
"$venv/bin/python" - "$constraints" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.utils import canonicalize_name

constraints = sys.argv[1]
wrong = []
for line in open(constraints):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, pinned = line.partition("==")
    try:
        installed = version(canonicalize_name(name))
    except PackageNotFoundError:
        installed = "missing"
    if installed != pinned:
        wrong.append(f"{name} {installed} ({constraints}: {pinned})")
if wrong:
    sys.exit("install.sh: installed versions differ from the constraints: " + ", ".join(wrong))
PY
# Prove the torch/torchvision pair imports (a mismatched build fails here, not in a test).
"$venv/bin/python" -c "import torch, torchvision, ray, pyspark, $extra_import; print(f'hybrid-infer installed in $venv (lane $lane, $constraints): torch {torch.__version__}, torchvision {torchvision.__version__}, ray {ray.__version__}, pyspark {pyspark.__version__}')"
