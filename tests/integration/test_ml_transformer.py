"""HybridInferenceModel in a pyspark.ml Pipeline, saved and loaded in a fresh session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import SQLTransformer

from hybrid_infer.ml import HybridInferenceModel
from hybrid_infer.pool.registry import Pool

from predictions import TEST_BATCH, TEST_MODEL, assert_matches, local_path
from runtime_env import RAY_ENV


def test_transformer_in_pipeline_saved_and_loaded_in_fresh_session(
        images_df, expected, ray_address, tmp_path):
    pools_at_start = set(Pool.names())
    try:
        _pipeline_round_trip(images_df, expected, ray_address, tmp_path)
    finally:
        for name in set(Pool.names()) - pools_at_start:
            Pool.get(name).stop()


def _pipeline_round_trip(images_df, expected, ray_address, tmp_path):
    stage = HybridInferenceModel(inputCol="content", outputCol="logits", model=TEST_MODEL,
                                 weights="random",
                                 batchSize=TEST_BATCH, numActors=1, rayAddress=ray_address)
    keep = SQLTransformer(statement="SELECT path, logits, error FROM __THIS__")
    model = Pipeline(stages=[stage, keep]).fit(images_df)
    rows = model.transform(images_df).collect()
    assert set(rows[0].asDict()) == {"path", "logits", "error"}
    assert_matches([{"path": r["path"], "prediction": r["logits"], "error": r["error"]}
                    for r in rows], expected)

    path = str(tmp_path / "pipeline")
    model.write().overwrite().save(path)
    loaded = PipelineModel.load(path).stages[0]
    assert isinstance(loaded, HybridInferenceModel)
    assert loaded.getOrDefault("outputCol") == "logits"
    assert loaded.getOrDefault("batchSize") == TEST_BATCH

    pools_before = Pool.names()
    script = textwrap.dedent(f"""
        import json, sys
        from pyspark.ml import PipelineModel
        from hybrid_infer.runtime import start_spark
        from hybrid_infer.sources import read_images
        spark, _ = start_spark("local[1]")
        model = PipelineModel.load({path!r})
        df = read_images(spark, {os.path.dirname(next(iter(expected)))!r})
        rows = model.transform(df).collect()
        json.dump([[r["path"], r["logits"], r["error"]] for r in rows], sys.stdout)
        spark.stop()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, **RAY_ENV}, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert_matches([{"path": p, "prediction": logits, "error": error}
                    for p, logits, error in fresh], expected)
    by_path = {local_path(r["path"]): r["logits"] for r in rows}
    for p, logits, _ in fresh:
        assert logits == by_path[local_path(p)]  # bit-identical: the same warm pool
    assert Pool.names() == pools_before
