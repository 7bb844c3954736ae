#!/usr/bin/env bash
# Creates .venv/ in the project root and installs hybrid-infer with its pinned stack.
# Idempotent: re-running it on an installed tree only checks the pins.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
command -v java >/dev/null || { echo "install.sh: Java 17 is required by Spark (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=.venv/install.log
# pip's own chatter goes to the log; it is printed only when an install step fails.
run_pip() { .venv/bin/python -m pip install "$@" >>"$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }; }
: >"$log"
run_pip --upgrade "pip>=24"
run_pip -e ".[dev,bench,mlflow]"
# Prove the torch/torchvision pair imports (a mismatched build fails here, not in a test).
.venv/bin/python -c "import torch, torchvision, ray, pyspark, raydp; print(f'hybrid-infer installed: torch {torch.__version__}, torchvision {torchvision.__version__}, ray {ray.__version__}, pyspark {pyspark.__version__}')"
