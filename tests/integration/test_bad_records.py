"""Bad records become per-row errors in a real job, in every mode, and through the CLI
(how each bad value is refused, and how odd but valid images decode: in
tests/unit/test_image_decoding.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from hybrid_infer import infer
from hybrid_infer.decode import Preprocess
from hybrid_infer.errors import from_spark
from hybrid_infer.job import _reason_kind
from hybrid_infer.models import ModelSpec

from runtime_env import RAY_ENV
from faults import (SMALL_BATCH, SMALL_MODEL, TEST_MAX_PIXELS, assert_rows_exactly,
                    images_frame, make_samples, reference_rows, small_jpegs, small_preprocess,
                    small_settings)

SAMPLES = make_samples()
BAD = {key: reason for key, (_, reason) in SAMPLES.items() if reason is not None}


def _job_values() -> dict:
    values = {key: value for key, (value, _) in SAMPLES.items()}
    values.update(small_jpegs(12, seed=1))
    return values


@pytest.mark.parametrize("mode", ["hybrid", "udf"])
def test_bad_records_become_row_errors_and_the_job_completes(spark, ray_address, small_pool,
                                                            mode):
    values = _job_values()
    preprocess = small_preprocess()
    expected = reference_rows(ModelSpec(SMALL_MODEL, weights="random"), values, preprocess)
    # the reference agrees with what each sample is meant to be
    assert {k for k, v in expected.items() if isinstance(v, str)} == set(BAD)
    rows = infer(images_frame(spark, values), SMALL_MODEL, weights="random",
                 mode=mode, pool=small_settings(),
                 preprocess=preprocess, ray_address=ray_address, rows_per_batch=3).collect()
    report = assert_rows_exactly(rows, expected)
    assert report["errors"] == len(BAD)


def test_fail_fast_raises_on_the_first_bad_row(spark, ray_address, small_pool):
    values = dict(small_jpegs(6, seed=2))
    values["broken"] = SAMPLES["truncated_jpeg"][0]
    result = infer(images_frame(spark, values), SMALL_MODEL, weights="random",
                   pool=small_settings(),
                   preprocess=small_preprocess(), ray_address=ray_address, fail_fast=True)
    with pytest.raises(Exception) as caught:
        result.collect()
    error = from_spark(caught.value)
    assert error is not None, str(caught.value)[:2000]
    assert "row id=broken: truncated or corrupt image data (JPEG)" in str(error), str(error)


@pytest.mark.slow
def test_cli_reports_failures_by_reason_and_fails_fast(tmp_path, ray_address, small_pool):
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = _job_values()
    table = pa.table({"id": list(values), "content": pa.array(list(values.values()),
                                                              pa.binary())})
    source = tmp_path / "input.parquet"
    pq.write_table(table, source)
    env = {**os.environ, **RAY_ENV}
    cli = [sys.executable, "-m", "hybrid_infer.cli", "run", "--input", str(source),
           "--ray-address", ray_address, "--model", SMALL_MODEL, "--weights", "random",
           "--batch-size",
           str(SMALL_BATCH), "--num-actors", "2", "--max-pixels", str(TEST_MAX_PIXELS),
           "--no-progress", "--spark-master", "local[1]"]
    done = subprocess.run(cli + ["--output", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 3, done.stderr[-3000:]   # 3: the job ran, some rows failed
    expected_reasons = reference_rows(ModelSpec(SMALL_MODEL, weights="random"), values, Preprocess(
        max_pixels=TEST_MAX_PIXELS))
    kinds = Counter(_reason_kind(r) for r in expected_reasons.values() if isinstance(r, str))
    assert sum(kinds.values()) == len(BAD)
    assert (f"rows {len(values)}, succeeded {len(values) - len(BAD)}, failed {len(BAD)}"
            in done.stdout), done.stdout
    for kind, count in kinds.items():
        assert f"{count} rows failed: {kind}\n" in done.stdout + "\n", (kind, done.stdout)
    written = pq.read_table(tmp_path / "out").to_pydict()
    assert sorted(written["id"]) == sorted(values)

    stopped = subprocess.run(cli + ["--output", str(tmp_path / "out2"), "--fail-fast"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert stopped.returncode == 1, stopped.stderr[-3000:]   # 1: a runtime error
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("hybrid-infer: error: bad record (fail_fast): row id="), last
    assert any(reason in last for reason in BAD.values()), last
