"""Spark inputs: a directory of image files (binaryFile) or a Parquet binary column.

Both give a DataFrame with an identity column and a binary column, checked up front so
a wrong path or column fails here with a message, not deep inside a Spark job.
"""

from __future__ import annotations

import os

from hybrid_infer.errors import InputError

IMAGE_GLOB = "*.{jpg,jpeg,png,gif,bmp,webp,tif,tiff,JPG,JPEG,PNG}"


def read_images(spark, path: str, *, glob: str = IMAGE_GLOB, recursive: bool = True):
    """DataFrame(path string, content binary) of the image files under `path`."""
    if "://" not in path and not os.path.exists(path):
        raise InputError(f"input path {path!r} does not exist: pass a directory of images "
                         "or a Parquet dataset (--input)")
    reader = (spark.read.format("binaryFile").option("pathGlobFilter", glob)
              .option("recursiveFileLookup", str(recursive).lower()))
    return reader.load(path).select("path", "content")


def read_parquet(spark, path: str, *, column: str = "content"):
    """The Parquet dataset at `path`; `column` must be binary."""
    if "://" not in path and not os.path.exists(path):
        raise InputError(f"input path {path!r} does not exist: pass a Parquet file or "
                         "directory (--input)")
    df = spark.read.parquet(path)
    check_binary_column(df, column)
    return df


def read_input(spark, path: str, *, column: str = "content"):
    """Pick the reader: Parquet for .parquet files or directories holding them."""
    if is_parquet(path):
        return read_parquet(spark, path, column=column)
    return read_images(spark, path)


def is_parquet(path: str) -> bool:
    if path.endswith(".parquet"):
        return True
    if os.path.isdir(path):
        return any(name.endswith(".parquet") for name in os.listdir(path))
    return False


def check_binary_column(df, column: str) -> None:
    from pyspark.sql.types import BinaryType

    fields = {f.name: f.dataType for f in df.schema.fields}
    if column not in fields:
        raise InputError(f"column {column!r} not found; the input has columns "
                         f"{sorted(fields)}: choose the binary column with --input-col")
    if not isinstance(fields[column], BinaryType):
        raise InputError(f"column {column!r} is {fields[column].simpleString()}, not binary: "
                         "choose a column of image bytes with --input-col")
