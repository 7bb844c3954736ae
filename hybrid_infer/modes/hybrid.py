"""The `hybrid` mode: Spark tasks stream Arrow batches to the warm actor pool.

Each task slices its Arrow batches to a bounded size, streams only the input column to
the pool over Arrow Flight (transport/client.py: no Ray in the task), and glues the
identity columns back onto the results it gets, so row identity never leaves the task.
"""

from __future__ import annotations

import collections

import pyarrow as pa

from hybrid_infer.output import result_spark_ddl
from hybrid_infer.transport.protocol import PoolAddress, dumps_options, encode_header


def run_hybrid(df, *, address: PoolAddress, input_col: str, id_cols: list[str],
               options, rows_per_batch: int = 64, max_in_flight: int = 2,
               timeout_s: float = 600.0, max_row_bytes: int | None = None):
    """df -> DataFrame(id_cols..., prediction, error[, top_k]) through the pool at `address`."""
    id_schema = df.select(*id_cols).schema
    out_ddl = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in id_schema.fields)
    result_ddl = result_spark_ddl(options.top_k, options.class_names is not None)
    out_ddl = (out_ddl + ", " if out_ddl else "") + result_ddl
    # once, on the driver; actors refuse a request batch over its rows x max_row_bytes
    header = encode_header("infer", dumps_options(options), max_row_bytes=max_row_bytes)

    def infer_partition(batches):
        from hybrid_infer.transport.client import PoolClient

        client = PoolClient(address, header, max_in_flight=max_in_flight, timeout_s=timeout_s)
        pending_ids: collections.deque[pa.RecordBatch] = collections.deque()

        def payloads():
            for piece in _slices(batches, rows_per_batch):
                pending_ids.append(piece.select(id_cols))
                yield piece.select([input_col])

        for result in client.map(payloads()):
            ids = pending_ids.popleft()
            yield pa.RecordBatch.from_arrays(
                list(ids.columns) + list(result.columns),
                names=list(ids.schema.names) + list(result.schema.names))

    return df.select(*id_cols, input_col).mapInArrow(infer_partition, out_ddl)


def _slices(batches, rows: int):
    for batch in batches:
        for offset in range(0, batch.num_rows, rows):
            yield batch.slice(offset, rows)
