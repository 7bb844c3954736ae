"""The output contract every mode honours: identity columns, `prediction`, `error`.

`prediction` holds the logits as array<float> (null when the row failed), `error` a
short reason (null when the row succeeded) and, with top_k > 0, `top_k` a struct of
class indices and softmax scores.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PREDICTION = "prediction"
ERROR = "error"
TOP_K = "top_k"


def result_arrow_fields(top_k: int = 0) -> list[pa.Field]:
    fields = [pa.field(PREDICTION, pa.list_(pa.float32())), pa.field(ERROR, pa.string())]
    if top_k:
        fields.append(pa.field(TOP_K, pa.struct([
            pa.field("indices", pa.list_(pa.int32())),
            pa.field("scores", pa.list_(pa.float32())),
        ])))
    return fields


def result_spark_ddl(top_k: int = 0) -> str:
    ddl = f"{PREDICTION} array<float>, {ERROR} string"
    if top_k:
        ddl += f", {TOP_K} struct<indices: array<int>, scores: array<float>>"
    return ddl


def result_batch(logits: np.ndarray, errors: list, top_k: int = 0) -> pa.RecordBatch:
    """Arrow columns for n rows: logits (n, classes) float32; errors[i] None if row i ran."""
    n = len(errors)
    failed = np.array([e is not None for e in errors], dtype=bool)
    logits = np.ascontiguousarray(logits, dtype=np.float32).reshape(n, -1)
    columns = [_list_column(logits, failed), pa.array(errors, type=pa.string())]
    if top_k:
        columns.append(_top_k_column(logits, failed, top_k))
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(result_arrow_fields(top_k)))


def _list_column(values: np.ndarray, null_rows: np.ndarray) -> pa.Array:
    n, width = values.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)),
                                    mask=pa.array(null_rows))


def _top_k_column(logits: np.ndarray, failed: np.ndarray, k: int) -> pa.Array:
    k = min(k, logits.shape[1]) if logits.size else k
    if logits.size:
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        indices = np.argsort(-logits, axis=1, kind="stable")[:, :k].astype(np.int32)
        scores = np.take_along_axis(probs, indices, axis=1).astype(np.float32)
    else:
        indices = np.zeros((0, k), np.int32)
        scores = np.zeros((0, k), np.float32)
    return pa.StructArray.from_arrays(
        [_list_column(indices, failed), _list_column(scores, failed)],
        names=["indices", "scores"], mask=pa.array(failed),
    )
