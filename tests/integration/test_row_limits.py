"""Row byte limits (issue 14 item 4): a value over max_row_bytes becomes its row's error,
checked in Spark's JVM before the value reaches Arrow or Python, in every mode.

The limit is tiny here so that values at limit-1, limit and limit+1 bytes are small real
JPEGs (padded after their end marker, which decoders ignore).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from hybrid_infer import infer
from hybrid_infer.api import JobOptions
from hybrid_infer.decode import DecodeError, open_rgb
from hybrid_infer.errors import ConfigurationError
from hybrid_infer.models import ModelSpec
from hybrid_infer.row_limits import (DEFAULT_MAX_ROW_BYTES, REFUSAL_COL, oversized_text,
                                     refuse_oversized)
from hybrid_infer.sources import read_images

from runtime_env import RAY_ENV
from faults import (SMALL_MODEL, assert_rows_exactly, images_frame, reference_rows, rgb_jpeg,
                    small_preprocess, small_settings)

JPEG = rgb_jpeg(64, 48, seed=5)
LIMIT = len(JPEG) + 100


def padded(size: int) -> bytes:
    """The test JPEG padded with zero bytes to exactly `size` bytes (same pixels)."""
    return JPEG + bytes(size - len(JPEG))


def around_the_limit() -> dict[str, bytes | None]:
    return {"under": padded(LIMIT - 1), "at": padded(LIMIT), "over": padded(LIMIT + 1),
            "far_over": padded(3 * LIMIT), "plain": JPEG, "null": None}


@pytest.mark.parametrize("value", [0, -1, 1.5, "10", True, None])
def test_the_limit_must_be_a_positive_number_of_bytes(value):
    with pytest.raises(ConfigurationError, match="max_row_bytes must be a positive"):
        JobOptions(max_row_bytes=value)


def test_the_default_is_64_mib():
    assert JobOptions().max_row_bytes == DEFAULT_MAX_ROW_BYTES == 64 * 1024 * 1024


def test_values_over_the_limit_are_refused_in_the_jvm(spark):
    values = around_the_limit()
    checked = refuse_oversized(images_frame(spark, values), "content", LIMIT)
    rows = {row["id"]: row for row in checked.collect()}
    assert sorted(rows) == sorted(values)
    for key in ("under", "at", "plain"):
        assert rows[key][REFUSAL_COL] is None and bytes(rows[key]["content"]) == values[key]
    assert rows["null"][REFUSAL_COL] is None and rows["null"]["content"] is None
    for key in ("over", "far_over"):
        assert rows[key]["content"] is None
        assert rows[key][REFUSAL_COL] == oversized_text(len(values[key]), LIMIT)


def test_numeric_arrays_count_their_element_bytes(spark):
    frame = spark.createDataFrame([("fits", [1.0] * 4), ("over", [1.0] * 5)],
                                  "id string, values array<float>")
    rows = {r["id"]: r for r in refuse_oversized(frame, "values", 16).collect()}
    assert rows["fits"][REFUSAL_COL] is None and rows["fits"]["values"] == [1.0] * 4
    assert rows["over"]["values"] is None
    assert rows["over"][REFUSAL_COL] == oversized_text(20, 16)


def _write_files(folder, values: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    for key, value in values.items():
        if value is not None:
            with open(os.path.join(folder, f"{key}.jpg"), "wb") as handle:
                handle.write(value)


def test_files_over_the_limit_are_never_read(spark, tmp_path):
    values = {k: v for k, v in around_the_limit().items() if v is not None}
    _write_files(tmp_path, values)
    # Spark's binaryFile source fails a read of any file over its own maxLength: set to
    # the limit, the scan would fail if it opened the oversized files at all.
    key = "spark.sql.sources.binaryFile.maxLength"
    before = spark.conf.get(key)
    spark.conf.set(key, str(LIMIT))
    try:
        rows = read_images(spark, str(tmp_path), max_row_bytes=LIMIT).collect()
    finally:
        spark.conf.set(key, before)
    contents = {os.path.basename(r["path"])[:-len(".jpg")]: bytes(r["content"]) for r in rows}
    assert sorted(contents) == sorted(values)
    for key in ("under", "at", "plain"):
        assert contents[key] == values[key]
    for key in ("over", "far_over"):
        with pytest.raises(DecodeError) as refused:
            open_rgb(contents[key])
        assert str(refused.value) == oversized_text(len(values[key]), LIMIT)


def _expected(values: dict) -> dict:
    spec = ModelSpec(SMALL_MODEL, weights="random")
    fits = {k: v for k, v in values.items() if v is None or len(v) <= LIMIT}
    expected = reference_rows(spec, fits, small_preprocess())
    expected.update({k: oversized_text(len(v), LIMIT) for k, v in values.items()
                     if k not in fits})
    return expected


@pytest.mark.parametrize("mode", ["hybrid", "udf"])
def test_every_row_comes_back_once_and_the_oversized_ones_with_their_reason(
        spark, ray_address, small_pool, mode):
    values = around_the_limit()
    expected = _expected(values)
    assert expected["null"] == "null value"
    assert np.allclose(expected["at"], expected["plain"])  # padding keeps the pixels
    rows = infer(images_frame(spark, values), SMALL_MODEL, weights="random", mode=mode,
                 pool=small_settings(), preprocess=small_preprocess(), top_k=2,
                 ray_address=ray_address, rows_per_batch=2, max_row_bytes=LIMIT).collect()
    assert rows[0].__fields__ == ["id", "prediction", "error", "top_k"]
    report = assert_rows_exactly(rows, expected)
    assert report["errors"] == 3  # over, far_over, null
    assert all(r["top_k"] is None for r in rows if r["id"] in ("over", "far_over"))


@pytest.mark.slow
def test_cli_run_refuses_oversized_files_and_counts_them(tmp_path, ray_address, small_pool):
    values = {k: v for k, v in around_the_limit().items() if v is not None}
    _write_files(tmp_path / "images", values)
    cli = [sys.executable, "-m", "hybrid_infer.cli", "run", "--input", str(tmp_path / "images"),
           "--output", str(tmp_path / "out"), "--ray-address", ray_address,
           "--model", SMALL_MODEL, "--weights", "random", "--num-actors", "1",
           "--batch-size", "4", "--torch-threads", "1", "--no-progress",
           "--spark-master", "local[1]", "--max-row-bytes", str(LIMIT)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **RAY_ENV})
    assert done.returncode == 3, done.stderr[-3000:]  # 3: the job ran, some rows failed
    assert "rows 5, succeeded 3, failed 2" in done.stdout, done.stdout
    assert "2 rows failed: value too large\n" in done.stdout + "\n", done.stdout


def test_fail_fast_stops_on_an_oversized_row_with_its_reason(spark, ray_address, small_pool):
    from hybrid_infer.errors import from_spark

    values = {"plain": JPEG, "over": padded(LIMIT + 1)}
    result = infer(images_frame(spark, values), SMALL_MODEL, weights="random",
                   pool=small_settings(), preprocess=small_preprocess(),
                   ray_address=ray_address, max_row_bytes=LIMIT, fail_fast=True)
    with pytest.raises(Exception) as caught:
        result.collect()
    error = from_spark(caught.value)
    assert error is not None, str(caught.value)[:2000]
    assert f"row id=over: value too large: {LIMIT + 1} bytes" in str(error), str(error)
