"""The output contract every mode honours: identity columns, `prediction`, `error`.

`prediction` holds the logits as array<float> (null when the row failed), `error` a
short reason (null when the row succeeded) and, with top_k > 0, `top_k` a struct of
class indices and softmax scores (and class `labels` when the model has class names).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PREDICTION = "prediction"
ERROR = "error"
TOP_K = "top_k"


def result_arrow_fields(top_k: int = 0, labels: bool = False) -> list[pa.Field]:
    fields = [pa.field(PREDICTION, pa.list_(pa.float32())), pa.field(ERROR, pa.string())]
    if top_k:
        top = [pa.field("indices", pa.list_(pa.int32())),
               pa.field("scores", pa.list_(pa.float32()))]
        if labels:
            top.append(pa.field("labels", pa.list_(pa.string())))
        fields.append(pa.field(TOP_K, pa.struct(top)))
    return fields


def result_spark_ddl(top_k: int = 0, labels: bool = False) -> str:
    ddl = f"{PREDICTION} array<float>, {ERROR} string"
    if top_k:
        extra = ", labels: array<string>" if labels else ""
        ddl += f", {TOP_K} struct<indices: array<int>, scores: array<float>{extra}>"
    return ddl


def result_batch(logits: np.ndarray, errors: list, top_k: int = 0,
                 class_names: tuple[str, ...] | None = None) -> pa.RecordBatch:
    """Arrow columns for n rows: logits (n, classes) float32; errors[i] None if row i ran.

    class_names: one name per class; with top_k, the top classes' names come along.
    """
    n = len(errors)
    failed = np.array([e is not None for e in errors], dtype=bool)
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    # A slice whose rows all failed may come with no outputs at all ((n, 0), (0, C)):
    # every row still gets its own (null) prediction and top_k, and its error.
    logits = logits.reshape(n, -1) if logits.size else np.zeros((n, 0), np.float32)
    columns = [_list_column(logits, failed), pa.array(errors, type=pa.string())]
    if top_k:
        columns.append(_top_k_column(logits, failed, top_k, class_names))
    schema = pa.schema(result_arrow_fields(top_k, labels=class_names is not None))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _list_column(values: np.ndarray, null_rows: np.ndarray) -> pa.Array:
    n, width = values.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)),
                                    mask=pa.array(null_rows))


def _top_k_column(logits: np.ndarray, failed: np.ndarray, k: int,
                  class_names: tuple[str, ...] | None = None) -> pa.Array:
    n, width = logits.shape
    k = min(k, width)
    if logits.size:
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        indices = np.argsort(-logits, axis=1, kind="stable")[:, :k].astype(np.int32)
        scores = np.take_along_axis(probs, indices, axis=1).astype(np.float32)
    else:
        indices = np.zeros((n, k), np.int32)
        scores = np.zeros((n, k), np.float32)
    arrays = [_list_column(indices, failed), _list_column(scores, failed)]
    names = ["indices", "scores"]
    if class_names is not None:
        lookup = np.asarray(list(class_names) + [None], dtype=object)
        known = np.where(indices < len(class_names), indices, len(class_names))
        labels = lookup[known].reshape(-1)
        offsets = pa.array(np.arange(len(indices) + 1, dtype=np.int32) * indices.shape[1])
        arrays.append(pa.ListArray.from_arrays(offsets, pa.array(labels, type=pa.string()),
                                               mask=pa.array(failed)))
        names.append("labels")
    return pa.StructArray.from_arrays(arrays, names=names, mask=pa.array(failed))
