"""The `hybrid` mode: Spark tasks stream Arrow batches to the warm actor pool.

Each task joins the Ray cluster once per Python worker, slices its Arrow batches to a
bounded size, ships only the input column to the pool, and glues the identity columns
back onto the results it gets, so row identity never leaves the task.
"""

from __future__ import annotations

import collections
import logging

import pyarrow as pa

from hybrid_infer.output import result_spark_ddl
from hybrid_infer.runtime import NAMESPACE, prepare_ray_address


def join_ray(address: str) -> None:
    """Connect this Spark Python worker to the pool's Ray cluster (once per process)."""
    import ray

    if not ray.is_initialized():
        prepare_ray_address(address)
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)


def run_hybrid(df, *, pool, ray_address: str, input_col: str, id_cols: list[str],
               options, rows_per_batch: int = 64, max_in_flight: int = 2,
               timeout_s: float = 600.0):
    """df -> DataFrame(id_cols..., prediction, error[, top_k]) through `pool`."""
    pool_name = pool.name
    id_schema = df.select(*id_cols).schema
    out_ddl = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in id_schema.fields)
    result_ddl = result_spark_ddl(options.top_k, options.class_names is not None)
    out_ddl = (out_ddl + ", " if out_ddl else "") + result_ddl

    def infer_partition(batches):
        from hybrid_infer.pool.dispatch import Dispatcher
        from hybrid_infer.pool.registry import Pool

        join_ray(ray_address)
        dispatcher = Dispatcher(Pool.get(pool_name), options, max_in_flight=max_in_flight,
                                timeout_s=timeout_s)
        slices = _slices(batches, rows_per_batch)
        pending_ids: collections.deque[pa.RecordBatch] = collections.deque()

        def payloads():
            for piece in slices:
                pending_ids.append(piece.select(id_cols))
                yield _compact(piece.select([input_col]))

        for result in dispatcher.map(payloads()):
            ids = pending_ids.popleft()
            yield pa.RecordBatch.from_arrays(
                list(ids.columns) + list(result.columns),
                names=list(ids.schema.names) + list(result.schema.names))

    return df.select(*id_cols, input_col).mapInArrow(infer_partition, out_ddl)


def _compact(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A copy holding only the slice's bytes.

    A slice shares its parent's buffers, and Ray serialises those whole: without the
    copy, every slice would ship the entire Arrow batch (up to 10,000 rows) to the pool.
    """
    return pa.RecordBatch.from_arrays([pa.concat_arrays([column]) for column in batch.columns],
                                      schema=batch.schema)


def _slices(batches, rows: int):
    for batch in batches:
        for offset in range(0, batch.num_rows, rows):
            yield batch.slice(offset, rows)
