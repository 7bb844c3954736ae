"""Run as users run: the user's own SparkSession first, nothing set by hand.

Each test writes a small script and runs it in a subprocess with the venv's Python and
a clean environment: no RAY_AUTH_TOKEN nor any other RAY_* variable. The engine starts
an embedded Ray itself (token auth on by default in Ray 2.60); Spark's Python workers,
started before it, reach the pool over Arrow Flight, never as Ray drivers.

README's examples on the user's own session run in test_readme.py. PySpark's documented
predict_batch_udf cases (tests/support/predict_batch_udf_cases.py) run here, in a
user's own session with no settings at all, as issue 17 asks: the drop-in on its
defaults (and, through a Connect server, in test_spark_connect.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from runtime_env import clean_env

BIN = os.path.dirname(sys.executable)
#: tests/support: where the predict_batch_udf cases live
SUPPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "support")


def run_script(tmp_path, code: str, *args, timeout: float = 1100, launcher=None, env=None):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(code))
    command = (launcher or [sys.executable]) + [str(script), *map(str, args)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env(), cwd=str(tmp_path))
    seconds = time.perf_counter() - started
    (tmp_path / "stdout.txt").write_text(done.stdout)
    (tmp_path / "stderr.txt").write_text(done.stderr)
    assert done.returncode == 0, _failure(done)
    return json.loads(done.stdout.split("RESULT", 1)[1].splitlines()[0]), seconds


def _failure(done) -> str:
    """The Python errors of a failed script (Spark's and Ray's logs drown them)."""
    lines = (done.stdout + done.stderr).splitlines()
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return "\n".join(errors[-25:]) + "\n---\n" + "\n".join(lines[-15:])


DOCUMENTED_CASES = """
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.master("local[2]").getOrCreate()   # the user's, first
    from pyspark.sql.functions import array
    import predict_batch_udf_cases as cases

    # no settings at all, as a user of PySpark's own predict_batch_udf writes it: each
    # case's pool takes a slot of the embedded Ray's 2 CPUs, and idle ones give way
    cases.POOL = None
    started = time.perf_counter()
    scalar_df = cases.scalar_df.__wrapped__(spark, None)
    abcd_df = cases.abcd_df.__wrapped__(spark, None)
    tensor_df = cases.tensor_df.__wrapped__(spark, None)
    checks = 0
    for name in dir(cases):
        if not name.startswith("test_") or name == "test_same_validation_errors":
            continue
        test = getattr(cases, name)
        params = test.__code__.co_varnames[:test.__code__.co_argcount]
        fixtures = {"scalar_df": scalar_df, "abcd_df": abcd_df, "tensor_df": tensor_df}
        if "make_fn" in params:
            for make_fn in (cases.make_multi_sum_columnar_fn, cases.make_multi_sum_rows_fn):
                test(tensor_df, make_fn)
                checks += 1
        else:
            test(*[fixtures[p] for p in params])
            checks += 1
    for message in cases.ERROR_CASES:
        cases.test_same_validation_errors(spark, None, message)
        checks += 1
    print("RESULT" + json.dumps({"checks": checks,
                                 "seconds": round(time.perf_counter() - started, 1)}))
"""


@pytest.mark.slow
@pytest.mark.core  # the only run of the documented cases on a classic session
@pytest.mark.timeout(1200)
def test_pyspark_documented_predict_batch_udf_cases_on_the_users_session(tmp_path):
    result, seconds = run_script(tmp_path, DOCUMENTED_CASES, SUPPORT, timeout=1100)
    print(f"FIGURES documented_cases checks={result['checks']} cases_s={result['seconds']} "
          f"script_s={seconds:.1f} load_avg={os.getloadavg()[0]:.0f}")
    # How long they take is a figure to report (printed above), not a test: a test must
    # not depend on the machine being idle.
    assert result["checks"] >= 15


NO_RAY_EXECUTORS = """
    import json, sys
    import numpy as np
    from pyspark.sql import SparkSession
    from pyspark.sql.types import FloatType

    # PYSPARK_PYTHON (set for this script) names the executors' Python: a wrapper
    spark = SparkSession.builder.master("local[2]").getOrCreate()

    def try_ray(batches):
        import os
        import pandas as pd
        for batch in batches:
            try:
                import ray  # noqa: F401
                seen = "ray imported"
            except ImportError as exc:
                seen = f"ImportError: {exc}"
            token = [k for k in os.environ if k.startswith("RAY_")]
            yield pd.DataFrame({"seen": [seen] * len(batch), "env": [",".join(token)] * len(batch)})

    probe = spark.range(4).repartition(2).mapInPandas(try_ray, "seen string, env string").collect()

    from hybrid_infer import PoolSettings, infer, predict_batch_udf, read_images

    images = read_images(spark, sys.argv[1])
    rows = infer(images, "mobilenet_v3_small", weights="random",
                 pool=PoolSettings(num_actors=1, batch_size=8)).collect()
    # the Transformer asks for the same pool settings: it reuses this warm pool
    from hybrid_infer.ml import HybridInferenceModel
    stage = HybridInferenceModel(inputCol="content", outputCol="logits",
                                 model="mobilenet_v3_small", weights="random",
                                 batchSize=8, numActors=1)
    transformed = stage.transform(images).collect()

    def make_plus_one_fn():
        def predict(inputs):
            return inputs + 1.0
        return predict

    plus_one = predict_batch_udf(make_plus_one_fn, return_type=FloatType(), batch_size=16)
    added = spark.range(50).repartition(2).select(plus_one("id").alias("y")).collect()
    print("RESULT" + json.dumps({
        "probe": sorted({r["seen"] for r in probe}), "env": sorted({r["env"] for r in probe}),
        "rows": len(rows), "errors": [r["error"] for r in rows if r["error"]],
        "transformed": sorted(r["path"] for r in transformed),
        "transform_errors": [r["error"] for r in transformed if r["error"]],
        "added": sorted(r["y"] for r in added)}))
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_executors_whose_python_has_no_ray_get_their_predictions(tmp_path, image_dir):
    blocker = tmp_path / "no_ray"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text(
        "raise ImportError('Ray is not installed on this executor')\n")
    wrapper = tmp_path / "executor_python"
    wrapper.write_text("#!/bin/sh\n"
                       "for name in $(env | sed -n 's/^\\(RAY_[A-Za-z0-9_]*\\)=.*/\\1/p'); do "
                       "unset \"$name\"; done\n"
                       f"export PYTHONPATH={blocker}${{PYTHONPATH:+:$PYTHONPATH}}\n"
                       f"exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    result, _ = run_script(tmp_path, NO_RAY_EXECUTORS, image_dir,
                           env=clean_env(PYSPARK_PYTHON=str(wrapper)))
    assert result["probe"] == ["ImportError: Ray is not installed on this executor"]
    assert result["env"] == [""]  # no Ray token nor any RAY_* variable in the executors
    assert result["rows"] == len(os.listdir(image_dir)) and not result["errors"]
    files = sorted(f"file:{os.path.join(image_dir, name)}" for name in os.listdir(image_dir))
    assert result["transformed"] == files and not result["transform_errors"]
    assert result["added"] == [float(i + 1) for i in range(50)]


SUBMITTED = """
    import json, sys
    from pyspark.sql import SparkSession
    from pyspark.sql.types import FloatType

    spark = SparkSession.builder.appName("submitted").getOrCreate()   # spark-submit's
    from hybrid_infer import infer, predict_batch_udf, read_images

    rows = infer(read_images(spark, sys.argv[1]), "mobilenet_v3_small",
                 weights="random").collect()

    def make_times_three_fn():
        def predict(inputs):
            return inputs * 3.0
        return predict

    udf = predict_batch_udf(make_times_three_fn, return_type=FloatType(), batch_size=8)
    tripled = spark.range(30).select(udf("id").alias("y")).collect()
    print("RESULT" + json.dumps({"master": spark.sparkContext.master, "rows": len(rows),
                                 "errors": [r["error"] for r in rows if r["error"]],
                                 "tripled": sorted(r["y"] for r in tripled)}))
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_spark_submit_driver(tmp_path, image_dir):
    submit = [os.path.join(BIN, "spark-submit"), "--master", "local[2]"]
    result, _ = run_script(tmp_path, SUBMITTED, image_dir, launcher=submit)
    assert result["master"] == "local[2]"
    assert result["rows"] == len(os.listdir(image_dir)) and not result["errors"]
    assert result["tripled"] == [3.0 * i for i in range(30)]
