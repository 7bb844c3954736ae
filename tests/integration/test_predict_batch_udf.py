"""hybrid_infer.predict_batch_udf's pool, beyond PySpark's documented cases (which run in
tests/e2e/test_user_sessions.py from tests/support/predict_batch_udf_cases.py): batches
never exceed batch_size, and make_predict_fn runs once per pool actor however many jobs
and UDF objects use it.
"""

from __future__ import annotations

import os
import sys
import uuid

import numpy as np
import pytest
from pyspark import cloudpickle
from pyspark.ml.functions import predict_batch_udf as pyspark_predict_batch_udf
from pyspark.sql.types import FloatType

from hybrid_infer import PoolSettings, predict_batch_udf
from hybrid_infer.pool.registry import Pool

from predict_batch_udf_cases import both, scalar_df  # noqa: F401 (a fixture)

# The make_predict_fn functions below live in this test module, which Spark's Python
# workers and Ray's actors cannot import: ship them by value, as a notebook would.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("stop_new_pools")


# -- batches never exceed batch_size ------------------------------------------------------
def make_batch_length_fn():
    def predict(inputs: np.ndarray) -> np.ndarray:
        return np.full(len(inputs), len(inputs), dtype=np.float32)
    return predict


def test_batches_never_exceed_batch_size(scalar_df):
    df = scalar_df.repartition(3)
    theirs, ours = both(make_batch_length_fn, lambda udf: df.select(udf("0").alias("n")),
                        return_type=FloatType(), batch_size=7)
    assert sorted(r["n"] for r in ours) == sorted(r["n"] for r in theirs)
    assert max(r["n"] for r in ours) == 7.0
    statuses = Pool.get(_pool_of(make_batch_length_fn)).status()["actors"]
    assert sum(s["rows"] for s in statuses) == 100
    assert max(s["max_batch_rows"] for s in statuses) == 7


def _pool_of(make_predict_fn) -> str:
    """The pool serving make_predict_fn: found by the pickled function, as the key is."""
    pickled = cloudpickle.dumps(make_predict_fn)
    names = [name for name in Pool.names()
             if getattr(Pool.get(name).describe()["spec"], "pickled_make_predict_fn", None)
             == pickled]
    assert len(names) == 1, names
    return names[0]


# -- make_predict_fn runs once per actor, across jobs and UDF objects ------------------------
def counting_make_fn(marker_dir: str):
    """A make_predict_fn that leaves one file per call, so calls can be counted."""

    def make_predict_fn():
        open(os.path.join(marker_dir, f"{os.getpid()}-{uuid.uuid4().hex}"), "w").close()

        def predict(inputs):
            return inputs + 1.0
        return predict
    return make_predict_fn


def test_make_predict_fn_runs_once_per_actor(scalar_df, tmp_path):
    pool_settings = PoolSettings(num_actors=2, num_cpus_per_actor=0.5)
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    ours_dir.mkdir()
    theirs_dir.mkdir()
    df = scalar_df.repartition(4)
    for _ in range(2):  # two UDF objects, two jobs each
        udf = predict_batch_udf(counting_make_fn(str(ours_dir)), return_type=FloatType(),
                                batch_size=16, pool=pool_settings)
        for _ in range(2):
            rows = df.select(udf("0").alias("y")).collect()
            assert sorted(r["y"] for r in rows) == [float(i + 1) for i in range(100)]
    assert len(os.listdir(ours_dir)) == pool_settings.placement.num_actors
    pool = Pool.get(_pool_of(counting_make_fn(str(ours_dir))))
    status = pool.status()
    assert status["model_loads"] == pool_settings.placement.num_actors
    assert status["rows"] == 4 * 100

    # A stopped pool (idle timeout, `pool stop`) comes back for the same UDF object.
    pool.stop()
    rows = df.select(udf("0").alias("y")).collect()
    assert sorted(r["y"] for r in rows) == [float(i + 1) for i in range(100)]
    assert len(os.listdir(ours_dir)) == 2 * pool_settings.placement.num_actors

    # PySpark's own function builds it again for every UDF object (and Python worker).
    for _ in range(2):
        udf = pyspark_predict_batch_udf(counting_make_fn(str(theirs_dir)),
                                        return_type=FloatType(), batch_size=16)
        for _ in range(2):
            df.select(udf("0")).collect()
    assert len(os.listdir(theirs_dir)) >= 2
