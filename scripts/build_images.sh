#!/usr/bin/env bash
# Builds the container images that cluster_configs/ names, from this repository:
#   $REGISTRY/hybrid-infer:<version>-gpu     docker/ray-gpu.Dockerfile  (KubeRay head + GPU workers)
#   $REGISTRY/hybrid-infer:<version>-spark   docker/spark.Dockerfile    (spark-operator driver + executors)
# and the wheel the Ray cluster launcher's file_mounts copy to every node:
#   dist/hybrid_infer-<version>-py3-none-any.whl
# REGISTRY defaults to the configs' placeholder, registry.example.com; PUSH=1 pushes.
set -euo pipefail
cd "$(dirname "$0")/.."
REGISTRY=${REGISTRY:-registry.example.com}
PY=${PYTHON:-python3}
VERSION=$("$PY" -c 'import re; print(re.search(r"^version = \"([^\"]+)\"", open("pyproject.toml").read(), re.M).group(1))')
"$PY" -m pip wheel --no-deps --wheel-dir dist .
if [ "${WHEEL_ONLY:-0}" = 1 ]; then exit 0; fi
docker build -f docker/ray-gpu.Dockerfile -t "$REGISTRY/hybrid-infer:$VERSION-gpu" .
docker build -f docker/spark.Dockerfile -t "$REGISTRY/hybrid-infer:$VERSION-spark" .
if [ "${PUSH:-0}" = 1 ]; then
    docker push "$REGISTRY/hybrid-infer:$VERSION-gpu"
    docker push "$REGISTRY/hybrid-infer:$VERSION-spark"
fi
