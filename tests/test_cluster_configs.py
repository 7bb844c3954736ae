"""Issue 5: the examples in cluster_configs/ are valid at the level that runs here.

Manifests parse (and the Ray launcher YAML passes Ray's own schema), the fields the
engine depends on agree with each other and with the code (namespace, Service name,
Java 17 flags, Ray version), every `hybrid-infer ...` command they show parses with
the real CLI, and the Python examples call real functions with real keywords.
"""

from __future__ import annotations

import ast
import glob
import inspect
import os
import re
import shlex

import pytest
import ray
import yaml

from hybrid_infer.cli import build_parser
from hybrid_infer.runtime import JAVA17_OPTIONS_STR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "cluster_configs")
K8S = os.path.join(CONFIGS, "kubernetes")


def load_yaml(*parts: str) -> dict:
    with open(os.path.join(CONFIGS, *parts)) as handle:
        return yaml.safe_load(handle)


def config_files() -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(CONFIGS, "**", "*"), recursive=True)
                  if os.path.isfile(p))


def test_every_kind_of_example_is_there():
    names = {os.path.relpath(p, CONFIGS) for p in config_files()}
    assert {"ray-cluster-launcher-gpu.yaml", "spark-defaults-for-ray.conf",
            "ray_on_spark.py", "raydp_on_ray_cluster.py",
            "kubernetes/raycluster.yaml", "kubernetes/sparkapplication.yaml"} <= names


@pytest.mark.parametrize("path", [p for p in config_files() if p.endswith((".yaml", ".yml"))],
                         ids=lambda p: os.path.relpath(p, CONFIGS))
def test_yaml_parses(path):
    with open(path) as handle:
        documents = [d for d in yaml.safe_load_all(handle) if d is not None]
    assert documents and all(isinstance(d, dict) for d in documents)


# -- (a) Ray cluster launcher + Spark settings ----------------------------------------------
def test_ray_launcher_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load_yaml("ray-cluster-launcher-gpu.yaml"))
    validate_config(config)  # raises on unknown or ill-typed fields
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}, "actors off the head"
    gpu_workers = [t for name, t in types.items()
                   if name != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu_workers and all(t["max_workers"] >= 100 for t in gpu_workers)
    (head_start,) = [c for c in config["head_start_ray_commands"] if "--head" in c]
    port = re.search(r"--port=(\d+)", head_start).group(1)
    assert any(f"--address=$RAY_HEAD_IP:{port}" in c for c in config["worker_start_ray_commands"])


def read_spark_defaults(path: str) -> dict[str, str]:
    conf = {}
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#"):
                key, value = line.split(None, 1)
                conf[key] = value
    return conf


def test_spark_defaults_carry_the_engines_java17_flags():
    conf = read_spark_defaults(os.path.join(CONFIGS, "spark-defaults-for-ray.conf"))
    assert conf["spark.driver.extraJavaOptions"] == JAVA17_OPTIONS_STR
    assert conf["spark.executor.extraJavaOptions"] == JAVA17_OPTIONS_STR
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"


# -- (c) Kubernetes: KubeRay + spark-operator -------------------------------------------------
def test_sparkapplication_reaches_the_rayclusters_head_service():
    ray_cluster = load_yaml("kubernetes", "raycluster.yaml")
    app = load_yaml("kubernetes", "sparkapplication.yaml")
    assert (ray_cluster["apiVersion"], ray_cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (app["apiVersion"], app["kind"]) == ("sparkoperator.k8s.io/v1beta2",
                                                "SparkApplication")
    namespace = ray_cluster["metadata"]["namespace"]
    assert app["metadata"]["namespace"] == namespace
    args = build_parser().parse_args(app["spec"]["arguments"])  # the real CLI accepts them
    assert args.command == "run" and args.spark_master is None  # spark-submit's master
    head_port = next(p["containerPort"] for p in
                     ray_cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
                     ["ports"] if p["name"] == "gcs")
    # KubeRay names the head Service <RayCluster name>-head-svc
    assert args.ray_address == (f"{ray_cluster['metadata']['name']}-head-svc.{namespace}"
                                f".svc.cluster.local:{head_port}")
    main_file = app["spec"]["mainApplicationFile"]
    assert main_file.endswith("/hybrid_infer/cli.py")
    assert os.path.exists(os.path.join(ROOT, "hybrid_infer", "cli.py"))
    spark_conf = app["spec"]["sparkConf"]
    assert spark_conf["spark.driver.extraJavaOptions"] == JAVA17_OPTIONS_STR
    assert spark_conf["spark.executor.extraJavaOptions"] == JAVA17_OPTIONS_STR
    assert app["spec"]["sparkVersion"] == __import__("pyspark").__version__


def test_raycluster_gpu_workers_match_their_ray_resources():
    spec = load_yaml("kubernetes", "raycluster.yaml")["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in spec["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert group["rayStartParams"]["num-gpus"] == gpus
        assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])


# -- the commands every example shows -----------------------------------------------------
# `hybrid-infer <subcommand> ...` where a command line starts: at the line's start
# (after a comment sign or prompt), after `-- ` (kubectl exec) or `&& `, or after a path.
COMMAND = re.compile(r"(?:^\s*(?:#\s*)?(?:\$\s*)?|--\s+|&&\s+|\S/)hybrid-infer\s+"
                     r"((?:run|demo|pool|bench)\b[^`#\n]*)")


def shown_commands() -> list[tuple[str, str]]:
    """(file, command line) for every command the examples and the README show,
    usage synopses (`[--opt]`, `a|b`, `...`) left out."""
    found = []
    for path in config_files() + [os.path.join(ROOT, "README.md")]:
        with open(path) as handle:
            for line in handle:
                match = COMMAND.search(line)
                if match and not re.search(r"\[|\||\.\.\.", match.group(1)):
                    found.append((os.path.relpath(path, ROOT), match.group(1).strip()))
    return found


def test_the_examples_show_commands():
    files = {path for path, _ in shown_commands()}
    assert {"cluster_configs/ray-cluster-launcher-gpu.yaml",
            "cluster_configs/kubernetes/raycluster.yaml"} <= files


@pytest.mark.parametrize("path,command", shown_commands())
def test_shown_command_parses_with_the_cli(path, command):
    build_parser().parse_args(shlex.split(command))  # SystemExit on an unknown option


# -- (b) Ray on Spark and (d) RayDP: Python examples -----------------------------------------
def known_callables() -> dict:
    import raydp
    from ray.util.spark import setup_ray_cluster

    from hybrid_infer import infer
    from hybrid_infer.pool.settings import PoolSettings

    return {"setup_ray_cluster": setup_ray_cluster, "init_spark": raydp.init_spark,
            "infer": infer, "PoolSettings": PoolSettings, "JobConfig": ray.job_config.JobConfig}


@pytest.mark.parametrize("name", ["ray_on_spark.py", "raydp_on_ray_cluster.py"])
def test_python_examples_call_real_functions(name):
    path = os.path.join(CONFIGS, name)
    with open(path) as handle:
        tree = ast.parse(handle.read(), filename=path)
    compile(tree, path, "exec")
    for node in ast.walk(tree):  # every import names something that exists here
        if isinstance(node, ast.ImportFrom):
            module = __import__(node.module, fromlist=["_"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
    callables = known_callables()
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if fname in callables:
            signature = inspect.signature(callables[fname])
            keywords = {k.arg: None for k in node.keywords if k.arg}
            signature.bind_partial(*[None] * len(node.args), **keywords)
            checked += 1
    assert checked >= 2, "the example no longer calls the APIs it documents"
