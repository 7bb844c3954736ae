"""The `raydp` mode: Spark on Ray (RayDP) -> Ray Data -> the same warm pool -> Spark.

`ray.data.from_spark` hands the DataFrame's partitions to Ray Data as Arrow blocks
without leaving the Ray cluster; Ray Data tasks send each block's input column to the
pool over Arrow Flight with the same PoolClient as the hybrid mode (so the pool, its
warm actors and its batching are shared with every other job), and `to_spark` turns the results
back into a DataFrame of the RayDP session. Same output contract as every mode.
"""

from __future__ import annotations

import pyarrow as pa

from hybrid_infer.errors import ConfigurationError
from hybrid_infer.transport.protocol import PoolAddress, dumps_options, encode_header


MAP_TASK_CPUS = 0.25  # what each Ray Data task that sends a block to the pool holds


def _check_room_for_ray_data() -> None:
    """Fail now, not hang: with RayDP's executors and the pool's actors holding every
    CPU, Ray Data's tasks would wait forever for one."""
    import ray

    free = ray.available_resources().get("CPU", 0.0)
    if free < MAP_TASK_CPUS:
        raise ConfigurationError(
            f"mode='raydp' needs {MAP_TASK_CPUS} free CPU for Ray Data's tasks, and the Ray "
            f"cluster has {free:g} left after RayDP's executors and the pool's actors "
            f"(of {ray.cluster_resources().get('CPU', 0):g}): give Ray more CPUs "
            "(connect_ray(num_cpus=4) on a small machine), fewer or smaller executors, or "
            "fewer actors (num_actors, num_cpus_per_actor)")


def is_raydp_session(spark) -> bool:
    from hybrid_infer.runtime import is_connect

    # A Spark Connect client has no SparkContext: its Spark is never RayDP's.
    return not is_connect(spark) and spark.sparkContext.master.startswith("ray")


def check_raydp_session(spark) -> None:
    """Fail before any work unless RayDP is usable here and `spark` is its session."""
    from hybrid_infer.runtime import import_raydp

    import_raydp()  # installed, and on a Spark line it supports (3.5)
    if not is_raydp_session(spark):
        raise ConfigurationError(
            "mode='raydp' needs a DataFrame of a RayDP Spark session (Spark on Ray): start "
            "it with hybrid_infer.runtime.start_raydp_spark() in a process that has not "
            "started a plain Spark session, or use mode='hybrid' on this session")


def run_raydp(df, *, address: PoolAddress, input_col: str, id_cols: list[str], options,
              rows_per_batch: int = 64, max_in_flight: int = 2, timeout_s: float = 600.0,
              max_row_bytes: int | None = None):
    """df (of a RayDP session: check_raydp_session) -> the same DataFrame as every mode."""
    import ray

    spark = df.sparkSession
    # once, on the driver; actors refuse a request batch over its rows x max_row_bytes
    header = encode_header("infer", dumps_options(options), max_row_bytes=max_row_bytes)

    def infer_block(table: pa.Table) -> pa.Table:
        from hybrid_infer.transport.client import PoolClient

        client = PoolClient(address, header, max_in_flight=max_in_flight, timeout_s=timeout_s)
        pieces = table.select([input_col]).to_batches(max_chunksize=rows_per_batch)
        results = list(client.map(iter(pieces)))
        result = pa.Table.from_batches(results) if results else None
        ids = table.select(id_cols)
        if result is None:
            return ids
        return pa.Table.from_arrays(list(ids.columns) + list(result.columns),
                                    names=id_cols + result.column_names)

    _check_room_for_ray_data()
    dataset = ray.data.from_spark(df.select(*id_cols, input_col))
    results = dataset.map_batches(infer_block, batch_format="pyarrow", zero_copy_batch=True,
                                  num_cpus=MAP_TASK_CPUS)
    # Materialised once: to_spark would otherwise run the blocks again to find the schema,
    # sending rows to the pool twice.
    return results.materialize().to_spark(spark)
