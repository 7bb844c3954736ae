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

from doc_blocks import DOC_FILES
from lanes import LANES, constraints, this_lane
from paths import REPO as ROOT
CONFIGS = os.path.join(ROOT, "cluster_configs")
K8S = os.path.join(CONFIGS, "kubernetes")

#: The lane the images and the Ray cluster launcher install: Spark 3.5, whichever lane
#: runs these tests. They carry the raydp extra (the RayDP example runs on that
#: cluster), and RayDP has no Spark 4 release.
IMAGES_LANE = "spark35"
IMAGES_CONSTRAINTS = LANES[IMAGES_LANE][0]
IMAGES_PINS = constraints(IMAGES_LANE)


def load_yaml(*parts: str) -> dict:
    with open(os.path.join(CONFIGS, *parts)) as handle:
        return yaml.safe_load(handle)


def config_files() -> list[str]:
    # the examples as shipped: not the bytecode a run of them leaves beside them
    return sorted(p for p in glob.glob(os.path.join(CONFIGS, "**", "*"), recursive=True)
                  if os.path.isfile(p) and "__pycache__" not in p.split(os.sep))


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
    assert app["spec"]["sparkVersion"] == IMAGES_PINS["pyspark"]


def test_raycluster_gpu_workers_match_their_ray_resources():
    spec = load_yaml("kubernetes", "raycluster.yaml")["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in spec["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert group["rayStartParams"]["num-gpus"] == gpus
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        # /dev/shm is KubeRay's (a memory emptyDir sized to the container's memory): a
        # hand-made mount, or a plasma-directory, would stop it from adding its own
        assert "plasma-directory" not in group["rayStartParams"]
        for container in group["template"]["spec"]["containers"]:
            assert not [m for m in container.get("volumeMounts", [])
                        if m["mountPath"] == "/dev/shm"]


# -- the Kubernetes manifests against their operators' own schemas --------------
SCHEMAS = os.path.join(ROOT, "tests", "support", "schemas")


def crd_validator(name: str):
    """A validator for a CRD's openAPIV3Schema (vendored in tests/support/schemas, see its README)
    that, like `kubectl apply` (strict field validation), refuses unknown fields."""
    import gzip
    import json

    import jsonschema

    with gzip.open(os.path.join(SCHEMAS, name)) as handle:
        document = json.load(handle)

    def strict(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)
        return node

    schema = strict(document["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: the API server's
    return document, jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("manifest, schema", [
    ("raycluster.yaml", "kuberay-v1.7.0-raycluster.json.gz"),
    ("sparkapplication.yaml", "spark-operator-v2.5.2-sparkapplication.json.gz"),
])
def test_kubernetes_manifest_passes_its_operators_schema(manifest, schema):
    document, validator = crd_validator(schema)
    config = load_yaml("kubernetes", manifest)
    assert config["apiVersion"] == document["apiVersion"]
    assert config["kind"] == document["kind"]
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(config)]
    assert not errors, errors
    # the validator does catch what kubectl would refuse
    broken = {**config, "spec": {**config["spec"], "noSuchField": 1}}
    assert not validator.is_valid(broken)


def test_token_auth_from_one_secret_reaches_ray_and_spark():
    ray_cluster = load_yaml("kubernetes", "raycluster.yaml")
    app = load_yaml("kubernetes", "sparkapplication.yaml")
    auth = ray_cluster["spec"]["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    for role in ("driver", "executor"):
        env = {e["name"]: e for e in app["spec"][role]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": auth["secretName"], "key": "auth_token"}  # KubeRay's key in the Secret
    with open(os.path.join(K8S, "raycluster.yaml")) as handle:  # how the Secret is made
        assert (f"create secret generic {auth['secretName']} --from-literal=auth_token="
                in handle.read())
    launcher = load_yaml("ray-cluster-launcher-gpu.yaml")
    for command in launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]:
        if "ray start" in command:
            assert command.startswith("RAY_AUTH_MODE=token "), command
    assert "~/.ray/auth_token" in launcher["file_mounts"]


def test_no_dashboard_or_port_is_exposed_on_all_interfaces():
    for path in config_files():  # in what the files set (their comments may explain it)
        with open(path) as handle:
            code = [ln for ln in handle if not ln.lstrip().startswith("#")]
        assert not [ln for ln in code if "0.0.0.0" in ln], path
    head = load_yaml("kubernetes", "raycluster.yaml")["spec"]["headGroupSpec"]
    # KubeRay binds the dashboard to 0.0.0.0 unless dashboard-host is given
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    ports = head["template"]["spec"]["containers"][0]["ports"]
    assert "dashboard" not in {p["name"] for p in ports}
    (head_start,) = [c for c in load_yaml("ray-cluster-launcher-gpu.yaml")
                     ["head_start_ray_commands"] if "--head" in c]
    assert "--dashboard-host=127.0.0.1" in head_start


def test_operator_namespace_is_documented():
    app = load_yaml("kubernetes", "sparkapplication.yaml")
    namespace = app["metadata"]["namespace"]
    with open(os.path.join(K8S, "sparkapplication.yaml")) as handle:
        text = handle.read()
    # the chart watches only `default` unless told; it then makes the service account
    assert f'--set "spark.jobNamespaces={{{namespace}}}"' in text
    assert app["spec"]["driver"]["serviceAccount"] == "spark-operator-spark"


# -- every image, path and file a config names is produced by this repository ---
def package_version() -> str:
    from hybrid_infer import __version__

    return __version__


def built_images() -> dict[str, str]:
    """image name -> Dockerfile, from scripts/build_images.sh with its default registry."""
    with open(os.path.join(ROOT, "scripts", "build_images.sh")) as handle:
        script = handle.read()
    registry = re.search(r"REGISTRY=\$\{REGISTRY:-([^}]+)\}", script).group(1)
    images = {}
    for dockerfile, tag in re.findall(r"docker build -f (\S+) -t \"([^\"]+)\"", script):
        name = tag.replace("$REGISTRY", registry).replace("$VERSION", package_version())
        images[name] = dockerfile
    return images


def named_images() -> list[tuple[str, str]]:
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    found.append((path, value))
                walk(value, path)
        elif isinstance(node, list):
            for value in node:
                walk(value, path)

    for path in config_files():
        if path.endswith((".yaml", ".yml")):
            with open(path) as handle:
                for document in yaml.safe_load_all(handle):
                    walk(document, os.path.relpath(path, ROOT))
    return found


def test_every_image_a_config_names_is_built_from_a_dockerfile_here():
    images = built_images()
    assert len(set(images.values())) == 2, images
    named = named_images()
    assert {path for path, _ in named} == {"cluster_configs/kubernetes/raycluster.yaml",
                                           "cluster_configs/kubernetes/sparkapplication.yaml"}
    for path, image in named:
        assert image in images, (path, image, sorted(images))
    for dockerfile in images.values():
        with open(os.path.join(ROOT, dockerfile)) as handle:
            text = handle.read()
        # built from the package's own install: its wheel, at the tested versions
        assert "pip wheel --no-deps" in text and "-c /tmp/constraints.txt" in text
        assert f"COPY --from=wheel /src/{IMAGES_CONSTRAINTS} /tmp/constraints.txt" in text
        for line in text.splitlines():  # everything it copies from the repository exists
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert os.path.exists(os.path.join(ROOT, source)), (dockerfile, source)
    gpu, spark = (images[f"registry.example.com/hybrid-infer:{package_version()}-{kind}"]
                  for kind in ("gpu", "spark"))
    with open(os.path.join(ROOT, gpu)) as handle:
        text = handle.read()
    assert f"ARG RAY_VERSION={ray.__version__}" in text
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-gpu" in text
    with open(os.path.join(ROOT, spark)) as handle:
        text = handle.read()
    assert f"ARG SPARK_VERSION={IMAGES_PINS['pyspark']}" in text
    assert "java17" in re.search(r"FROM apache/spark:\S+", text).group(0)


def test_every_path_in_the_spark_image_a_config_names_is_made_by_its_dockerfile():
    app = load_yaml("kubernetes", "sparkapplication.yaml")
    dockerfile = built_images()[app["spec"]["image"]]
    with open(os.path.join(ROOT, dockerfile)) as handle:
        text = handle.read()
    main_file = app["spec"]["mainApplicationFile"][len("local://"):]
    assert "ln -s" in text and main_file in text              # -> the installed cli.py
    python = app["spec"]["sparkConf"]["spark.pyspark.python"]
    venv = python[:-len("/bin/python")]
    assert f"-m venv {venv}" in text and f"{venv}/bin/pip install" in text
    conf = read_spark_defaults(os.path.join(CONFIGS, "spark-defaults-for-ray.conf"))
    assert conf["spark.pyspark.python"] == python


def test_launcher_file_mounts_come_from_the_repository_or_a_documented_step(wheel):
    from ray.scripts.scripts import cli as ray_cli

    launcher = load_yaml("ray-cluster-launcher-gpu.yaml")
    with open(os.path.join(CONFIGS, "ray-cluster-launcher-gpu.yaml")) as handle:
        text = handle.read()
    mounts = launcher["file_mounts"]
    assert mounts["/opt/hybrid-infer/constraints.txt"] == f"./{IMAGES_CONSTRAINTS}"
    assert os.path.isfile(os.path.join(ROOT, IMAGES_CONSTRAINTS))
    # ./dist is the wheel scripts/build_images.sh builds (documented in the file): the
    # session's wheel is built the same way; check it is the file setup_commands installs
    assert mounts["/opt/hybrid-infer/dist"] == "./dist"
    assert "WHEEL_ONLY=1 scripts/build_images.sh" in text
    with open(os.path.join(ROOT, "scripts", "build_images.sh")) as handle:
        assert "pip wheel --no-deps --wheel-dir dist ." in handle.read()
    (install,) = [c for c in launcher["setup_commands"] if "pip install" in c]
    assert f"/opt/hybrid-infer/dist/{os.path.basename(wheel)}[raydp]" in install
    assert "-c /opt/hybrid-infer/constraints.txt" in install
    # the token file comes from `ray get-auth-token --generate`, a real Ray command
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "ray get-auth-token --generate" in text and "get-auth-token" in ray_cli.commands


def test_ray_on_spark_gives_each_ray_node_its_spark_tasks_gpus():
    import importlib.util

    loaded = importlib.util.spec_from_file_location("ray_on_spark_example",
                                                    os.path.join(CONFIGS, "ray_on_spark.py"))
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)

    class Conf(dict):
        def get(self, key, default=None):
            return super().get(key, default)

    class Spark:
        def __init__(self, **conf):
            self.conf = Conf(conf)

    assert module.gpus_per_ray_node(Spark()) == 0
    assert module.gpus_per_ray_node(Spark(**{"spark.task.resource.gpu.amount": "2"})) == 2
    assert module.gpus_per_ray_node(Spark(**{"spark.task.resource.gpu.amount": "1.0"})) == 1
    assert module.gpus_per_ray_node(Spark(), override=4) == 4


def test_readme_ray_start_binds_to_loopback():
    """`--node-ip-address=127.0.0.1` alone is rewritten to the routable address, and the
    GCS and raylet listen there; with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 they keep
    127.0.0.1 (what the embedded runtime does, hybrid_infer.runtime). README and docs/."""
    lines = []
    for path in DOC_FILES:
        with open(os.path.join(ROOT, path)) as handle:
            lines += [ln for ln in handle if "ray start --head" in ln and "127.0.0.1" in ln]
    assert lines
    for line in lines:
        assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start" in line, line


# -- the commands every example shows -----------------------------------------------------
# `hybrid-infer <subcommand> ...` where a command line starts: at the line's start
# (after a comment sign or prompt), after `-- ` (kubectl exec) or `&& `, or after a path.
COMMAND = re.compile(r"(?:^\s*(?:#\s*)?(?:\$\s*)?|--\s+|&&\s+|\S/)hybrid-infer\s+"
                     r"((?:run|demo|pool|bench)\b[^`#\n]*)")


def shown_commands() -> list[tuple[str, str]]:
    """(file, command line) for every command the examples and the documentation (README,
    docs/, benchmarks/README.md) show, usage synopses (`[--opt]`, `a|b`, `...`) left out."""
    found = []
    for path in config_files() + [os.path.join(ROOT, p) for p in DOC_FILES]:
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
    words = shlex.split(command)
    if words[0] == "bench":  # `hybrid-infer bench` hands its words to the benchmark's parser
        from hybrid_infer.bench.config import build_parser as bench_parser
        bench_parser().parse_args(words[1:])  # SystemExit on an unknown option
        return
    build_parser().parse_args(words)  # SystemExit on an unknown option


# -- (b) Ray on Spark and (d) RayDP: Python examples -----------------------------------------
def known_callables() -> dict:
    from ray.util.spark import setup_ray_cluster

    from hybrid_infer import infer
    from hybrid_infer.pool.settings import PoolSettings

    callables = {"setup_ray_cluster": setup_ray_cluster, "infer": infer,
                 "PoolSettings": PoolSettings, "JobConfig": ray.job_config.JobConfig}
    if "raydp" in constraints():  # the lanes whose install has RayDP
        import raydp

        callables["init_spark"] = raydp.init_spark
    return callables


@pytest.mark.parametrize("name", ["ray_on_spark.py", "raydp_on_ray_cluster.py"])
def test_python_examples_call_real_functions(name):
    if name.startswith("raydp") and "raydp" not in constraints():
        pytest.skip(f"the {this_lane()} lane installs no RayDP (no release for Spark 4): "
                    f"the {IMAGES_LANE} lane, where the RayDP example runs, checks it")
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
