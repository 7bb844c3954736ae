# The Ray node image that cluster_configs/kubernetes/raycluster.yaml names
# (registry.example.com/hybrid-infer:<version>-gpu): Ray 2.60.0 with CUDA, plus this
# package built from this repository and installed at the tested versions
# (constraints.txt, the Spark 3.5 lane: the CUDA build of torch 2.14.1 that CI runs),
# with the raydp extra (RayDP has no Spark 4 release, so the images stay on that lane).
# Java 17 is there for a driver started on the head (`ray job submit -- hybrid-infer run`
# starts a local Spark) and for RayDP's Java workers.
#
# Build from the repository root (scripts/build_images.sh builds and tags both images):
#   docker build -f docker/ray-gpu.Dockerfile -t registry.example.com/hybrid-infer:0.1.0-gpu .
ARG RAY_VERSION=2.60.0

# 1. the wheel, from the package's own build (pyproject.toml)
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY hybrid_infer ./hybrid_infer
RUN python -m pip wheel --no-deps --wheel-dir /dist .

# 2. Ray's own GPU image, plus the wheel
FROM rayproject/ray:${RAY_VERSION}-py311-gpu
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
USER ray
COPY --from=wheel /dist/ /tmp/dist/
COPY --from=wheel /src/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt "$(ls /tmp/dist/hybrid_infer-*.whl)[raydp]" \
    && python -c "import hybrid_infer, torch, torchvision, ray, pyspark, raydp" \
    && rm -rf /tmp/dist /tmp/constraints.txt
