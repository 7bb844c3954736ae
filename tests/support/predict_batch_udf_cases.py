"""PySpark's documented predict_batch_udf cases: hybrid_infer.predict_batch_udf against
PySpark's own, case by case (a library, not collected by pytest on its own).

Every example of PySpark 3.5's predict_batch_udf docstring runs with both functions on
the same SparkSession and must give the same rows; the same misuse must fail with the
same message. They run once in the suite, as a user runs them: on a user's own session
with no settings (tests/e2e/test_user_sessions.py, POOL = None), and through a Spark
Connect server, each kind of input and output (tests/e2e/test_spark_connect.py runs
those cases of this file with pytest). What only a pool can show (batch sizes,
make_predict_fn once per actor) is tests/integration/test_predict_batch_udf.py.
"""

from __future__ import annotations

import os
import re
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
from pyspark import cloudpickle
from pyspark.ml.functions import predict_batch_udf as pyspark_predict_batch_udf
from pyspark.sql.functions import array
from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

from hybrid_infer import PoolSettings, predict_batch_udf
from hybrid_infer.pool.registry import Pool

# The make_predict_fn functions below live in this test module, which Spark's Python
# workers and Ray's actors cannot import: ship them by value, as a notebook would.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# One small actor per UDF; pools are stopped after each test (the test head has 8 CPUs).
POOL = PoolSettings(num_actors=1, num_cpus_per_actor=0.5)


def both(make_predict_fn, frame_of, **kwargs):
    """The rows PySpark's UDF and ours produce: frame_of(udf) -> DataFrame."""
    theirs = pyspark_predict_batch_udf(make_predict_fn, **kwargs)
    ours = predict_batch_udf(make_predict_fn, pool=POOL, **kwargs)
    return frame_of(theirs).collect(), frame_of(ours).collect()


def assert_same_rows(theirs, ours):
    assert len(theirs) > 0
    assert [r.asDict(recursive=True) for r in ours] == [r.asDict(recursive=True)
                                                        for r in theirs]


# -- the docstring's data ------------------------------------------------------------------
@pytest.fixture(scope="module")
def scalar_df(spark, ray_address):
    return spark.createDataFrame(pd.DataFrame(np.arange(100)))


@pytest.fixture(scope="module")
def abcd_df(spark, ray_address):
    data = np.arange(0, 1000, dtype=np.float64).reshape(-1, 4)
    return spark.createDataFrame(pd.DataFrame(data, columns=["a", "b", "c", "d"]))


@pytest.fixture(scope="module")
def tensor_df(spark, ray_address):
    data = np.arange(0, 1000, dtype=np.float64).reshape(-1, 4)
    pdf = pd.DataFrame(data, columns=["a", "b", "c", "d"])
    pdf_tensor = pd.DataFrame()
    pdf_tensor["t1"] = pdf.values.tolist()
    pdf_tensor["t2"] = pdf.drop(columns="d").values.tolist()
    return spark.createDataFrame(pdf_tensor)


pytestmark = pytest.mark.usefixtures("stop_new_pools")


# -- the docstring's predict functions -------------------------------------------------
def make_times_two_fn():
    def predict(inputs: np.ndarray) -> np.ndarray:
        return inputs * 2
    return predict


def make_sum_rows_fn():
    def predict(inputs: np.ndarray) -> np.ndarray:
        return np.sum(inputs, axis=1)
    return predict


def make_sum4_fn():
    def predict(x1, x2, x3, x4):
        return x1 + x2 + x3 + x4
    return predict


def make_multi_sum_fn():
    def predict(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
        return np.sum(x1, axis=1) + np.sum(x2, axis=1)
    return predict


def make_multi_sum_columnar_fn():
    def predict_columnar(x1, x2):
        return {"sum1": np.sum(x1, axis=1), "sum2": np.sum(x2, axis=1)}
    return predict_columnar


def make_multi_sum_rows_fn():
    def predict_row(x1, x2):
        return [{"sum1": np.sum(x1[i]), "sum2": np.sum(x2[i])} for i in range(len(x1))]
    return predict_row


def make_multi_times_two_fn():
    def predict(x1, x2):
        return {"t1x2": x1 * 2, "t2x2": x2 * 2}
    return predict


def make_linear_model_fn():
    """The MNIST example's shape (a tensor column in, a 2-D array out), with NumPy."""
    weights = np.random.default_rng(0).normal(size=(4, 3))

    def predict(inputs: np.ndarray) -> np.ndarray:
        return inputs.reshape(len(inputs), -1) @ weights
    return predict


SUMS = StructType([StructField("sum1", FloatType(), True), StructField("sum2", FloatType(), True)])


def test_single_scalar_column(scalar_df):
    theirs, ours = both(make_times_two_fn, lambda udf: scalar_df.withColumn("x2", udf("0")),
                        return_type=FloatType(), batch_size=10)
    assert_same_rows(theirs, ours)
    assert ours[4]["x2"] == 8.0


def test_multiple_scalar_columns_as_one_array(abcd_df):
    theirs, ours = both(make_sum_rows_fn,
                        lambda udf: abcd_df.withColumn("sum", udf(array("a", "b", "c", "d"))),
                        return_type=FloatType(), batch_size=10, input_tensor_shapes=[[4]])
    assert_same_rows(theirs, ours)
    assert ours[1]["sum"] == 22.0


def test_multiple_scalar_columns_as_several_inputs(abcd_df):
    theirs, ours = both(make_sum4_fn,
                        lambda udf: abcd_df.withColumn("sum", udf("a", "b", "c", "d")),
                        return_type=FloatType(), batch_size=10)
    assert_same_rows(theirs, ours)
    assert ours[2]["sum"] == 38.0


def test_columns_given_as_column_objects(abcd_df):
    theirs, ours = both(make_sum4_fn,
                        lambda udf: abcd_df.withColumn("sum", udf(abcd_df.a, abcd_df.b,
                                                                  abcd_df.c, abcd_df.d)),
                        return_type=FloatType(), batch_size=10)
    assert_same_rows(theirs, ours)


def test_multiple_tensor_columns(tensor_df):
    theirs, ours = both(make_multi_sum_fn,
                        lambda udf: tensor_df.withColumn("sum", udf("t1", "t2")),
                        return_type=FloatType(), batch_size=5, input_tensor_shapes=[[4], [3]])
    assert_same_rows(theirs, ours)
    assert ours[0]["sum"] == 9.0


def test_sparse_tensor_shapes(tensor_df):
    theirs, ours = both(make_multi_sum_fn,
                        lambda udf: tensor_df.withColumn("sum", udf("t1", "t2")),
                        return_type=FloatType(), batch_size=5,
                        input_tensor_shapes={0: [4], 1: [3]})
    assert_same_rows(theirs, ours)


@pytest.mark.parametrize("make_fn", [make_multi_sum_columnar_fn, make_multi_sum_rows_fn])
def test_struct_outputs_columnar_and_row_based(tensor_df, make_fn):
    theirs, ours = both(make_fn,
                        lambda udf: tensor_df.withColumn("preds", udf("t1", "t2"))
                        .select("t1", "t2", "preds.*"),
                        return_type=SUMS, batch_size=5, input_tensor_shapes=[[4], [3]])
    assert_same_rows(theirs, ours)
    assert (ours[1]["sum1"], ours[1]["sum2"]) == (22.0, 15.0)


def test_struct_of_array_outputs(tensor_df):
    arrays = StructType([StructField("t1x2", ArrayType(FloatType()), True),
                         StructField("t2x2", ArrayType(FloatType()), True)])
    theirs, ours = both(make_multi_times_two_fn,
                        lambda udf: tensor_df.withColumn("x2", udf("t1", "t2"))
                        .select("t1", "t2", "x2.*"),
                        return_type=arrays, batch_size=5, input_tensor_shapes=[[4], [3]])
    assert_same_rows(theirs, ours)
    assert ours[1]["t2x2"] == [8.0, 10.0, 12.0]


def test_tensor_column_to_array_output(tensor_df):
    theirs, ours = both(make_linear_model_fn,
                        lambda udf: tensor_df.withColumn("preds", udf("t1")),
                        return_type=ArrayType(FloatType()), batch_size=7,
                        input_tensor_shapes=[[2, 2]])
    assert_same_rows(theirs, ours)
    assert len(ours[0]["preds"]) == 3


def make_named_inputs_fn():
    def predict(inputs: dict) -> np.ndarray:
        return np.sum(inputs["x"], axis=1) - np.sum(inputs["y"], axis=1)
    return predict


def test_input_names_pass_one_dict(tensor_df):
    udf = predict_batch_udf(make_named_inputs_fn, return_type=FloatType(), batch_size=5,
                            input_tensor_shapes=[[4], [3]], input_names=["x", "y"], pool=POOL)
    rows = tensor_df.withColumn("diff", udf("t1", "t2")).collect()
    assert [r["diff"] for r in rows] == [float(r["t1"][3]) for r in rows]


# -- the same errors, with the same messages ----------------------------------------------
def make_wrong_length_fn():
    def predict(inputs):
        return inputs[:-1]
    return predict


ERROR_CASES = {
    "Tensor columns require input_tensor_shapes":
        (make_multi_sum_fn, lambda df: ("t1", "t2"), {"input_tensor_shapes": None}),
    "Model expected 2 inputs, but received 3 columns":
        (make_multi_sum_fn, lambda df: ("a", "b", "c"), {}),
    "Multiple input columns found, but model expected a single input, use `array` to "
    "combine columns into tensors.":
        (make_times_two_fn, lambda df: ("a", "b"), {}),
    "input_tensor_shapes must match columns":
        (make_multi_sum_fn, lambda df: ("a", "b"), {"input_tensor_shapes": [[1], [1], [1]]}),
    "Prediction results must have same length as input data":
        (make_wrong_length_fn, lambda df: ("a",), {}),
}


@pytest.mark.parametrize("message", list(ERROR_CASES))
def test_same_validation_errors(spark, ray_address, message):
    make_fn, columns_of, extra = ERROR_CASES[message]
    if "Tensor" in message:
        df = spark.createDataFrame(pd.DataFrame({"t1": [[1.0, 2.0]] * 4, "t2": [[3.0]] * 4}))
    else:
        df = spark.createDataFrame(pd.DataFrame(np.ones((6, 3)), columns=["a", "b", "c"]))
    for make_udf in (pyspark_predict_batch_udf, _ours):
        udf = make_udf(make_fn, return_type=FloatType(), batch_size=4, **extra)
        with pytest.raises(Exception, match=re.escape(message)):
            df.select(udf(*columns_of(df))).collect()


def _ours(make_fn, **kwargs):
    return predict_batch_udf(make_fn, pool=POOL, **kwargs)


