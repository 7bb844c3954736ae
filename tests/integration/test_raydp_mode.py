"""The raydp mode: Spark on Ray -> Ray Data -> the SAME warm pool -> Spark.

A process that started a plain Spark JVM (this one: the `spark` fixture) cannot start
RayDP's Spark, so the raydp job runs in a subprocess that joins this test's Ray
cluster. It must give the hybrid mode's predictions and use the pool this process
warmed, not a new one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from hybrid_infer import infer
from hybrid_infer.models import ModelSpec
from hybrid_infer.pool.registry import Pool
from hybrid_infer.pool.settings import PoolSettings

from predictions import TEST_BATCH, TEST_MODEL, assert_matches
from runtime_env import RAY_ENV

SETTINGS = PoolSettings(num_actors=1, batch_size=TEST_BATCH, torch_threads=1)

if int(__import__("pyspark").__version__.split(".")[0]) >= 4:
    pytest.skip("RayDP has no Spark 4 release: the raydp mode runs on the Spark 3.5 lane "
                "(tests/unit/test_packaging.py checks that Spark 4 refuses it, naming that lane)",
                allow_module_level=True)


@pytest.mark.slow
def test_raydp_mode_matches_hybrid_on_the_same_pool(images_df, image_dir, expected,
                                                    ray_address):
    pool = Pool.get_or_create(ModelSpec(TEST_MODEL, weights="random"), SETTINGS)
    try:
        hybrid_rows = infer(images_df, TEST_MODEL, weights="random", pool=SETTINGS,
                            ray_address=ray_address).collect()
        assert_matches(hybrid_rows, expected)
        pools_before = Pool.names()
        rows_before = pool.status()["rows"]

        script = textwrap.dedent(f"""
            import json, sys
            from hybrid_infer import infer
            from hybrid_infer.pool.registry import Pool
            from hybrid_infer.pool.settings import PoolSettings
            from hybrid_infer.runtime import connect_ray, start_raydp_spark
            from hybrid_infer.sources import read_images
            connect_ray({ray_address!r})
            spark = start_raydp_spark(num_executors=1, executor_cores=1,
                                      executor_memory="700m")
            df = read_images(spark, {image_dir!r})
            settings = PoolSettings(num_actors=1, batch_size={TEST_BATCH}, torch_threads=1)
            rows = infer(df, {TEST_MODEL!r}, weights="random",
                         mode="raydp", pool=settings).collect()
            print("RESULT" + json.dumps({{
                "rows": [[r["path"], r["prediction"], r["error"]] for r in rows],
                "pools": Pool.names()}}))
            import raydp
            raydp.stop_spark()
        """)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**os.environ, **RAY_ENV}, timeout=500)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
        assert done.returncode == 0 and lines, (done.stdout[-2000:], done.stderr[-4000:])
        result = json.loads(lines[-1][len("RESULT"):])
        assert_matches([{"path": p, "prediction": pred, "error": err}
                        for p, pred, err in result["rows"]], expected)
        assert result["pools"] == pools_before            # no new pool...
        assert pool.status()["rows"] - rows_before == len(expected)  # ...this one served it
    finally:
        pool.stop()
