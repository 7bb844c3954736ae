"""Issue 21: every entry point through Spark Connect, against a real Connect server.

The server is Spark's own (`SparkConnectServer` from the spark-connect jar that pyspark
4's package bundles), started once for this module on a loopback port and stopped after
it. Each test runs a user's program in a fresh process with a clean environment: a
Connect client has no SparkContext, no JVM and no broadcast, so any path that touched
them would fail there (PySpark raises JVM_ATTRIBUTE_NOT_SUPPORTED).

- README's Spark Connect example, as written (its block is skipped by test_readme);
- PySpark's documented predict_batch_udf cases on the drop-in, each kind of input and
  output (CONNECT_CASES of tests/support/predict_batch_udf_cases.py) with its `spark`
  fixture a Connect session;
- infer() in hybrid and udf modes (the same predictions; udf's weights ship as a
  session artifact), the udf mode's progress line (Spark 4's progress handler), the ML
  Transformer with its persistence, and a stream;
- the command line: $SPARK_REMOTE, and --remote.

On the Spark 3.5 lane these tests are skipped: pyspark 3.5's package has no Connect
server (Spark ships it there as a separate Maven package, which an offline machine
cannot fetch).
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from runtime_env import clean_env, free_port, stop_group
from hybrid_infer.demo_data import generate_jpegs

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)  # tests/: the tiers' folders are below it
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
SERVER_START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 420


def _spark_home() -> str:
    import pyspark

    return os.path.dirname(pyspark.__file__)


def _connect_jar() -> str | None:
    found = glob.glob(os.path.join(_spark_home(), "jars", "spark-connect_*.jar"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory):
    """sc://127.0.0.1:PORT of a Spark Connect server (local[2]) for this module."""
    import pyspark

    if _connect_jar() is None:
        pytest.skip(f"pyspark {pyspark.__version__}'s package bundles no Spark Connect "
                    "server (spark-connect jar): the Spark 4 lane runs these tests")
    port = free_port()
    log_path = tmp_path_factory.mktemp("connect") / "server.log"
    home = _spark_home()
    command = [os.path.join(home, "bin", "spark-submit"), "--class", SERVER_CLASS,
               "--name", "hybrid-infer tests' Spark Connect", "--master", "local[2]"]
    for key, value in {"spark.connect.grpc.binding.address": "127.0.0.1",
                       "spark.connect.grpc.binding.port": str(port),
                       "spark.driver.host": "127.0.0.1",
                       "spark.driver.bindAddress": "127.0.0.1",
                       "spark.ui.enabled": "false",
                       "spark.sql.shuffle.partitions": "4"}.items():
        command += ["--conf", f"{key}={value}"]
    env = clean_env(SPARK_HOME=home, PYSPARK_PYTHON=sys.executable,
                    SPARK_LOCAL_IP="127.0.0.1", SPARK_NO_DAEMONIZE="1")
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _wait_for_server(server, port, log_path)
        yield f"sc://127.0.0.1:{port}"
    finally:
        stop_group(server, timeout_s=15)


def _wait_for_server(server, port: int, log_path) -> None:
    deadline = time.time() + SERVER_START_TIMEOUT_S
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the Spark Connect server exited:\n{log_path.read_text()[-3000:]}")
        if "Spark Connect server started at" in log_path.read_text():
            return
        time.sleep(1)
    raise RuntimeError(f"no Spark Connect server on {port} within {SERVER_START_TIMEOUT_S} s:"
                       f"\n{log_path.read_text()[-3000:]}")


@pytest.fixture
def workdir(tmp_path):
    generate_jpegs(str(tmp_path / "images"), 8, seed=3)
    return tmp_path


def run(args, *, cwd, env, timeout=RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    return done


def run_python(code: str, *, cwd, env) -> subprocess.CompletedProcess:
    script = cwd / "program.py"
    script.write_text(code)
    return run([sys.executable, str(script)], cwd=cwd, env=env)


def _test_module(name: str) -> str:
    """The path of tests/**/NAME (tests may live in tier folders)."""
    found = glob.glob(os.path.join(TESTS, "**", name), recursive=True)
    assert len(found) == 1, (name, found)
    return found[0]


def readme_connect_block() -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_tests", _test_module("test_readme.py"))
    readme_tests = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readme_tests)  # registered first: it defines dataclasses
    found = [block.code for block in readme_tests.readme_blocks()
             if "SPARK_REMOTE" in block.code and block.lang == "python"]
    assert len(found) == 1, "README has one Spark Connect example (a python block naming SPARK_REMOTE)"
    return found[0]


def test_readmes_connect_example_runs_through_a_connect_server(connect_url, workdir):
    done = run_python(readme_connect_block(), cwd=workdir,
                      env=clean_env(SPARK_REMOTE=connect_url))
    assert "predicted 8 rows" in done.stdout and "udf 8 rows" in done.stdout, done.stdout


#: The documented cases run through Connect: each kind of input (one column, several,
#: Column objects, which are Connect's own class on a Connect client, tensor columns,
#: input_names) and of output (scalar, struct columnar and row-based, array). The rest
#: (the same kinds again, and the validation errors) run on the classic session only
#: (tests/e2e/test_user_sessions.py): they add minutes and no Connect path.
CONNECT_CASES = ("single_scalar_column", "several_inputs", "column_objects",
                 "multiple_tensor_columns", "struct_outputs", "tensor_column_to_array",
                 "input_names")


def test_pysparks_documented_predict_batch_udf_cases_through_connect(connect_url, tmp_path):
    """PySpark's documented predict_batch_udf cases (tests/support/predict_batch_udf_cases.py,
    CONNECT_CASES) with a Connect session: PySpark's own predict_batch_udf and the
    drop-in give the same rows, through the server."""
    cases = _test_module("predict_batch_udf_cases.py")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         cases, "-k", " or ".join(CONNECT_CASES)],
        cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        env={**clean_env(), "HYBRID_INFER_TEST_SPARK_REMOTE": connect_url,
             "PYTHONPATH": os.pathsep.join({HERE, os.path.dirname(cases)})})
    tail = done.stdout[-3000:]
    assert done.returncode == 0, (tail, done.stderr[-3000:])
    assert re.search(r"\b8 passed", tail) and "failed" not in tail, tail


API_PROGRAM = textwrap.dedent("""
    import io, json, os
    import numpy as np
    from pyspark.ml import Pipeline, PipelineModel
    from hybrid_infer import infer, read_images, start_runtime
    from hybrid_infer.ml import HybridInferenceModel
    from hybrid_infer.progress import job_progress
    from hybrid_infer.runtime import is_connect
    from hybrid_infer.stream import start_stream

    here = os.path.abspath(".")
    # one pool for every hybrid job below: the Transformer's defaults (batchSize 32)
    spec = dict(model="resnet18", weights="random", num_actors=1, batch_size=32)
    found = {}
    with start_runtime() as rt:  # SPARK_REMOTE: a Connect session
        found["connect"] = is_connect(rt.spark)
        df = read_images(rt.spark, here + "/images")
        hybrid = {r.path: r.prediction for r in infer(df, **spec).collect()}
        udf = {r.path: r.prediction for r in infer(df, **spec, mode="udf").collect()}
        found["rows"] = [len(hybrid), len(udf)]
        found["max_difference"] = max(float(np.abs(np.subtract(hybrid[p], udf[p])).max())
                                      for p in hybrid)
        shown = io.StringIO()
        with job_progress(rt.spark, mode="udf", job_id="connect-progress", total_rows=8,
                          interval_s=0.2, stream=shown):
            infer(df, **spec, mode="udf").write.parquet(here + "/udf_out")
        found["progress"] = shown.getvalue().splitlines()
        found["tags_after"] = sorted(rt.spark.getTags())
        stage = HybridInferenceModel(model="torchvision.models:resnet18", weights="random",
                                     numActors=1, outputCol="logits")
        Pipeline(stages=[stage]).fit(df).write().overwrite().save(here + "/pipeline")
        found["pipeline"] = PipelineModel.load(here + "/pipeline").transform(df).count()
        stage.write().save(here + "/stage")
        found["stage_actors"] = HybridInferenceModel.load(here + "/stage").getOrDefault("numActors")
        query = start_stream(rt.spark, input_path=here + "/images", output_path=here + "/stream",
                             checkpoint=here + "/checkpoint", available_now=True, **spec)
        query.awaitTermination()
        found["stream"] = rt.spark.read.parquet(here + "/stream").count()
    print("RESULT " + json.dumps(found))
""")


def test_every_entry_point_takes_a_connect_session(connect_url, workdir):
    done = run_python(API_PROGRAM, cwd=workdir,
                      env=clean_env(SPARK_REMOTE=connect_url))
    found = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert found["connect"] is True
    assert found["rows"] == [8, 8]
    assert found["max_difference"] < 1e-3  # udf's weights arrived (an artifact, no broadcast)
    assert found["progress"][-1].startswith("rows 8/8 (100%)"), found["progress"]
    assert found["tags_after"] == []  # the job's session tag is removed after it
    assert found["pipeline"] == 8 and found["stage_actors"] == 1
    assert found["stream"] == 8


def test_the_command_line_honours_spark_remote_and_remote(connect_url, workdir):
    env = clean_env(SPARK_REMOTE=connect_url)
    done = run(["hybrid-infer", "run", "--input", "images", "--output", "out.parquet",
                "--model", "resnet18", "--weights", "random", "--mode", "udf", "--json"],
               cwd=workdir, env=env)
    summary = json.loads(done.stdout)
    assert summary["rows"] == summary["succeeded"] == 8, summary
    assert os.path.isdir(workdir / "out.parquet")  # relative paths are this folder's
    # --remote, over a $SPARK_REMOTE where nothing listens (udf: no pool to start)
    done = run(["hybrid-infer", "demo", "--images", "8", "--workdir", "demo", "--json",
                "--mode", "udf", "--remote", connect_url], cwd=workdir,
               env=clean_env(SPARK_REMOTE="sc://127.0.0.1:9"))
    summary = json.loads(done.stdout)
    assert summary["rows"] == summary["succeeded"] == 8 and summary["mode"] == "udf"
