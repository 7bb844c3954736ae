"""`predict_batch_udf`: PySpark's function of the same name, served by a warm actor pool.

Same signature and contract as `pyspark.ml.functions.predict_batch_udf` (PySpark 3.5):
the Spark side converts columns to NumPy and validates predictions with PySpark's own
helpers, so inputs, outputs and error messages are PySpark's. The difference is where
`make_predict_fn` runs: once per pool actor (actor/predict_fn.py), kept loaded
across jobs and across UDF objects built from the same function and settings, instead
of once per Spark Python worker and UDF object.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterator, List, Mapping, Optional, Union

import pandas as pd
from pyspark.ml.functions import (
    _batched,
    _has_tensor_cols,
    _validate_and_transform_multiple_inputs,
    _validate_and_transform_prediction_result,
    _validate_and_transform_single_input,
)

from hybrid_infer.actor.predict_fn import PredictFnSpec
from hybrid_infer.pool.settings import PoolSettings
from hybrid_infer.transport.protocol import (PredictRequest, batch_object, encode_header,
                                             object_batch)

# The predict function's parameter names, per pool (asked once per driver process).
_PARAMETER_NAMES: dict[str, list[str]] = {}


def predict_batch_udf(
    make_predict_fn: Callable[[], Callable],
    *,
    return_type,
    batch_size: int,
    input_tensor_shapes: Optional[Union[List[Optional[List[int]]], Mapping[int, List[int]]]] = None,
    input_names: Optional[List[str]] = None,
    pool: PoolSettings | None = None,
    ray_address: str | None = None,
):
    """A pandas UDF running `make_predict_fn`'s predict function on the warm pool.

    Arguments as in `pyspark.ml.functions.predict_batch_udf`, plus:
    input_names: name each input column; predict then receives ONE dict
    {name: ndarray} instead of positional arrays (shapes from input_tensor_shapes
    still apply, in column order).
    pool: PoolSettings for the actors (num_actors, CPUs/GPUs per actor...) and this
    UDF's tasks (max_in_flight, batch_timeout_s); batch_size always comes from the
    argument above.
    ray_address: the Ray cluster to use (default: the connected one, else a local one).

    The driver joins Ray and starts the pool now; Spark tasks reach it over Arrow Flight
    with no Ray. Each time the returned UDF is applied to columns (on the driver), the
    pool is found again, or started again if it stopped since (idle timeout, `pool stop`).
    """
    from pyspark import cloudpickle
    from pyspark.sql.types import DataType

    from hybrid_infer.runtime import connect_ray

    type_text = return_type.json() if isinstance(return_type, DataType) else str(return_type)
    spec = PredictFnSpec(
        cloudpickle.dumps(make_predict_fn),
        f"return_type={type_text} batch_size={batch_size} "
        f"input_tensor_shapes={input_tensor_shapes!r} input_names={input_names!r}",
    )
    settings = (pool or PoolSettings()).with_parts({"actor": {"batch_size": batch_size}})
    connect_ray(ray_address)
    made: dict = {}

    def pandas_udf_now():
        """The pandas UDF bound to the pool's current address (started if stopped)."""
        from hybrid_infer.pool.registry import Pool

        running = Pool.get_or_create(spec, settings)
        running.lease(settings.client.plan_lease_s)  # for the plan's first tasks (api.infer)
        address = running.address()
        if address not in made:
            num_inputs = len(input_names) if input_names else \
                len(_parameter_names(Pool.get(address.pool_name)))
            made.clear()
            made[address] = _pandas_udf(address, settings, num_inputs, return_type,
                                        batch_size, input_tensor_shapes, input_names)
        return made[address]

    first = pandas_udf_now()  # warm the pool now, not in the first task

    def udf(*cols):
        return pandas_udf_now()(*cols)

    for name in ("func", "returnType", "evalType", "deterministic", "asNondeterministic",
                 "__doc__"):
        setattr(udf, name, getattr(first, name))
    return udf


def _pandas_udf(address, settings: PoolSettings, num_expected_cols: int, return_type,
                batch_size: int, input_tensor_shapes, input_names):
    """The pandas UDF Spark runs: PySpark's input conversion and output checks around a
    PoolClient streaming each batch (pickled NumPy inputs, one per Arrow row)."""
    from pyspark.sql.functions import pandas_udf

    input_shapes = _dense_shapes(input_tensor_shapes, num_expected_cols)
    header = encode_header("infer")
    max_in_flight, timeout_s = settings.client.max_in_flight, settings.client.batch_timeout_s

    def predict(data: Iterator[Union[pd.Series, pd.DataFrame]]) -> Iterator[pd.DataFrame]:
        from hybrid_infer.transport.client import PoolClient

        row_counts: deque[int] = deque()

        def requests():
            for pandas_batch in data:
                has_tuple = isinstance(pandas_batch, tuple)
                has_tensors = _has_tensor_cols(pandas_batch)
                if has_tensors and not input_shapes:
                    raise ValueError("Tensor columns require input_tensor_shapes")
                for batch in _batched(pandas_batch, batch_size):
                    inputs = _model_inputs(batch, num_expected_cols, input_shapes,
                                           has_tensors, has_tuple)
                    if input_names:
                        inputs = [dict(zip(input_names, inputs))]
                    row_counts.append(len(batch))
                    yield object_batch(PredictRequest(tuple(inputs), len(batch)))

        client = PoolClient(address, header, max_in_flight=max_in_flight, timeout_s=timeout_s)
        for answer in client.map(requests()):
            yield _validate_and_transform_prediction_result(batch_object(answer),
                                                            row_counts.popleft(), return_type)

    return pandas_udf(predict, return_type)


def _model_inputs(batch: pd.DataFrame, num_expected_cols: int, input_shapes,
                  has_tensors: bool, has_tuple: bool) -> list:
    """The predict function's positional inputs, converted exactly as PySpark does."""
    num_input_cols = len(batch.columns)
    if num_input_cols == num_expected_cols and num_expected_cols > 1:
        return _validate_and_transform_multiple_inputs(batch, input_shapes, num_input_cols)
    if num_expected_cols == 1:
        return [_validate_and_transform_single_input(batch, input_shapes, has_tensors,
                                                     has_tuple)]
    msg = "Model expected {} inputs, but received {} columns"
    raise ValueError(msg.format(num_expected_cols, num_input_cols))


def _dense_shapes(input_tensor_shapes, num_expected_cols: int):
    """PySpark's sparse {index: shape} form as a list with None for scalar inputs."""
    if isinstance(input_tensor_shapes, Mapping):
        shapes: list = [None] * num_expected_cols
        for index, shape in input_tensor_shapes.items():
            shapes[index] = shape
        return shapes
    return input_tensor_shapes


def _parameter_names(pool) -> list[str]:
    import ray

    if pool.name not in _PARAMETER_NAMES:
        _PARAMETER_NAMES[pool.name] = ray.get(pool.actors()[0].parameter_names.remote())
    return _PARAMETER_NAMES[pool.name]
