"""Row byte limits: a value too large to move safely becomes that row's `error`.

One huge value (a 200 MB blob in a Parquet column) used to exhaust the Spark JVM's heap:
Spark copies it into an Arrow batch for the Python worker, the worker into Python
objects, the task into a Flight message. The limit is checked in Spark SQL, in the JVM,
before any of those copies, so an oversized value never reaches Arrow, Py4J, Python,
Ray or Flight; its row comes back with an `error` saying why and what to do.

- A DataFrame column (`refuse_oversized`, used by `infer()` in every mode): the value is
  replaced by null and the reason kept in a column of its own that travels with the
  row's identity columns; `merge_refusals` makes it the row's `error`.
- A folder of files (`limit_file_rows`, used by `sources.read_images`): Spark's
  binaryFile source filters on the file's `length` before opening it (a pushed-down
  filter), so an oversized file is never read; its row carries ROW_ERROR_MARKER and the
  reason as content, which decoding turns into the row's `error`.
"""

from __future__ import annotations

import logging
import numbers

from hybrid_infer.decode import ROW_ERROR_MARKER

log = logging.getLogger(__name__)

#: The default row byte limit: 64 MiB.
#:
#: Why this number: with Spark's defaults (1 GiB of driver heap in local mode, executors
#: sized alike) one value is held several times over on its way to a model: Parquet's
#: page and the row Spark builds from it, the Arrow batch written for the Python worker
#: (whose buffers grow by doubling), the Python bytes, the Flight message. At 64 MiB
#: those copies stay a few hundred MiB per task, so two concurrent tasks still fit in
#: 1 GiB, and one value stays far below Arrow's and Py4J's 2 GiB limits. Images are
#: much smaller: a 64-megapixel JPEG (the decoder's own `max_pixels` default) is
#: typically 10-40 MB. Raise it (`max_row_bytes`, `--max-row-bytes`) for larger values
#: together with Spark's memory (spark.driver.memory / spark.executor.memory).
DEFAULT_MAX_ROW_BYTES = 64 * 1024 * 1024

#: The column carrying a refused row's reason beside its identity columns.
REFUSAL_COL = "_hybrid_infer_row_refused"

#: Fixed-width element types of numeric array inputs (input_shape), in bytes.
_ELEMENT_BYTES = {"byte": 1, "short": 2, "int": 4, "bigint": 8, "float": 4, "double": 8}


def check_limit(max_row_bytes) -> int:
    """The limit as an int, or ConfigurationError when it is not a positive integer."""
    from hybrid_infer.errors import ConfigurationError

    if isinstance(max_row_bytes, bool) or not isinstance(max_row_bytes, numbers.Integral) \
            or max_row_bytes <= 0:
        raise ConfigurationError(f"max_row_bytes must be a positive number of bytes, got "
                                 f"{max_row_bytes!r} (default {DEFAULT_MAX_ROW_BYTES})")
    return int(max_row_bytes)


#: A refused row's `error`: the same first words for every such row ("value too large"),
#: so that a job's summary counts them as one kind of failure.
_REASON = ("value too large: {nbytes} bytes, over the row byte limit of {limit} "
           "(max_row_bytes); the row is refused before Spark hands it to Python: shrink "
           "or split the value, or raise max_row_bytes (--max-row-bytes) together with "
           "Spark's memory")


def oversized_text(nbytes: int, limit: int) -> str:
    """The `error` of a row whose value has `nbytes` bytes, over `limit`."""
    return _REASON.format(nbytes=nbytes, limit=limit)


def oversized_reason(nbytes, limit: int):
    """oversized_text as a Spark string Column, for `nbytes` a Column computed in the JVM."""
    from pyspark.sql import functions as F

    before, after = _REASON.format(nbytes="\0", limit=limit).split("\0")
    return F.concat(F.lit(before), nbytes.cast("string"), F.lit(after))


def value_nbytes(column: str, data_type):
    """A Column with the bytes of `column`'s value, computed in the JVM; None for a type
    whose size is not known (then the column is not checked)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, BinaryType, StringType

    if isinstance(data_type, (BinaryType, StringType)):
        return F.octet_length(F.col(column))
    if not isinstance(data_type, ArrayType):
        return None
    values, element = F.col(column), data_type.elementType
    while isinstance(element, ArrayType):  # nested arrays: count their leaves
        values, element = F.flatten(values), element.elementType
    width = _ELEMENT_BYTES.get(element.simpleString())
    return None if width is None else F.size(values) * F.lit(width)


def refuse_oversized(df, column: str, max_row_bytes: int):
    """df with `column` null where its value is over `max_row_bytes`, and REFUSAL_COL
    holding the reason (null elsewhere). Lazy: the check runs in the JVM, in the same
    stage that reads the value, before any Arrow batch is made."""
    from pyspark.sql import functions as F

    nbytes = value_nbytes(column, df.schema[column].dataType)
    if nbytes is None:
        log.debug("column %s (%s) has no known byte size: not checked against "
                  "max_row_bytes", column, df.schema[column].dataType.simpleString())
        return df.withColumn(REFUSAL_COL, F.lit(None).cast("string"))
    over = nbytes > F.lit(max_row_bytes)
    return (df.withColumn(REFUSAL_COL, F.when(over, oversized_reason(nbytes, max_row_bytes)))
              .withColumn(column, F.when(over, F.lit(None)).otherwise(F.col(column))))


def merge_refusals(result):
    """A mode's result with each refused row's reason as its `error`, REFUSAL_COL gone.

    A refused row was sent as null, so its prediction (and top_k) are null already.
    """
    from pyspark.sql import functions as F

    from hybrid_infer.output import ERROR

    return (result.withColumn(ERROR, F.coalesce(F.col(REFUSAL_COL), F.col(ERROR)))
                  .drop(REFUSAL_COL))


def limit_file_rows(files, max_row_bytes: int):
    """binaryFile rows (path, length, content) -> (path, content), where a file over
    `max_row_bytes` is never opened: its content is ROW_ERROR_MARKER + the reason.

    The `length` filters are pushed down into the binaryFile scan, which checks them on
    each file's status before reading it; the oversized branch does not ask for
    `content`, so it reads no file either.
    """
    from pyspark.sql import functions as F

    within = files.where(F.col("length") <= max_row_bytes).select("path", "content")
    marker = F.concat(F.lit(ROW_ERROR_MARKER),
                      F.encode(oversized_reason(F.col("length"), max_row_bytes), "utf-8"))
    over = files.where(F.col("length") > max_row_bytes).select(
        "path", marker.alias("content"))
    return within.unionByName(over)
