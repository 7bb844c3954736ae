# The Spark image that cluster_configs/kubernetes/sparkapplication.yaml names
# (registry.example.com/hybrid-infer:<version>-spark): Apache Spark 3.5.7 on Java 17, a
# Python 3.11 virtual environment at /opt/hybrid-infer/.venv with this package built
# from this repository at the tested versions (constraints.txt: the Spark 3.5 lane, as
# the Ray image, which carries RayDP; RayDP has no Spark 4 release), and the paths the
# configs name:
#   /opt/hybrid-infer/.venv/bin/python       spark.pyspark.python (driver and executors)
#   /opt/hybrid-infer/hybrid_infer/cli.py    the SparkApplication's mainApplicationFile
# Spark tasks only read bytes and stream them to the Ray pool, so torch comes from
# PyTorch's CPU index here (torch 2.14.1+cpu with its matching torchvision 0.29.1+cpu
# satisfy the constraints' ==2.14.1 / ==0.29.1): no CUDA libraries in the Spark image.
#
# Build from the repository root (scripts/build_images.sh builds and tags both images):
#   docker build -f docker/spark.Dockerfile -t registry.example.com/hybrid-infer:0.1.0-spark .
ARG SPARK_VERSION=3.5.7

# 1. the wheel, from the package's own build (pyproject.toml)
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY hybrid_infer ./hybrid_infer
RUN python -m pip wheel --no-deps --wheel-dir /dist .

# 2. Apache Spark's own image (Ubuntu 22.04), plus Python 3.11 and the wheel
FROM apache/spark:${SPARK_VERSION}-scala2.12-java17-ubuntu
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /dist/ /tmp/dist/
COPY --from=wheel /src/constraints.txt /tmp/constraints.txt
RUN python3.11 -m venv /opt/hybrid-infer/.venv \
    && /opt/hybrid-infer/.venv/bin/pip install --no-cache-dir \
         --extra-index-url https://download.pytorch.org/whl/cpu \
         -c /tmp/constraints.txt "$(ls /tmp/dist/hybrid_infer-*.whl)" \
    && mkdir -p /opt/hybrid-infer/hybrid_infer \
    && ln -s "$(/opt/hybrid-infer/.venv/bin/python -c 'import hybrid_infer.cli as c; print(c.__file__)')" \
         /opt/hybrid-infer/hybrid_infer/cli.py \
    && rm -rf /tmp/dist /tmp/constraints.txt
ENV PYSPARK_PYTHON=/opt/hybrid-infer/.venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/hybrid-infer/.venv/bin/python \
    PATH=/opt/hybrid-infer/.venv/bin:$PATH
USER spark
