"""`hybrid-infer demo`, as a user runs it (a subprocess, a clean environment): every
image comes back once, live progress on stderr, the random weights said in one plain
line, and Ray's and Spark's own messages kept off the console in a log file."""

from __future__ import annotations

import os
import shutil

import pyarrow.parquet as pq
import pytest

from command_line import cli
from progress_lines import progress_rows

@pytest.mark.slow
def test_demo_answers_every_image_shows_progress_and_keeps_ray_and_spark_off_the_console(
        tmp_path):
    """The 64-image demo, stderr captured (not a terminal). Small requests and model
    batches on one single-threaded actor (real options) make answers arrive in steps
    of 4 rows, polled every 0.5 s."""
    workdir = tmp_path / "demo"
    done = cli(tmp_path, "demo", "--workdir", str(workdir), "--weights", "random",
               "--num-actors", "1", "--torch-threads", "1", "--batch-size", "4",
               "--rows-per-batch", "4", "--progress-interval", "0.5", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    # every image once, with its logits and top-5
    assert "rows 64, succeeded 64, failed 0" in done.stdout
    assert "input files 64, one row each" in done.stdout
    table = pq.read_table(str(workdir / "predictions.parquet"))
    assert table.num_rows == 64
    assert set(table.column_names) >= {"path", "prediction", "error", "top_k"}
    assert len(set(table.column("path").to_pylist())) == 64
    assert all(len(p) == 1000 for p in table.column("prediction").to_pylist())

    # offline, the demo runs random weights and says so, in one plain line on stderr
    # (stdout holds the summary), not Python's file:line: Category form
    assert "with random weights" in done.stderr
    warned = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert any(line.startswith("hybrid-infer: warning: resnet18 runs with random weights")
               for line in warned), done.stderr[-3000:]
    assert "RandomWeightsWarning" not in done.stderr, done.stderr[-3000:]

    # progress: rows actually answered, each update on its own line, never going back
    assert "\r" not in done.stderr  # no in-place redraws in a file
    rows = progress_rows(done.stderr, 64)
    assert rows and rows[-1] == 64, done.stderr[-3000:]
    assert rows == sorted(rows), rows
    assert [n for n in rows if 0 < n < 64], f"no intermediate progress: {rows}"

    # Ray's and Spark's own messages: in the log file the summary names, not on stderr
    for noise in ("NativeCodeLoader", "Token authentication", "log4j", "Setting default log "
                  "level", " WARN "):
        assert noise not in done.stderr, (noise, done.stderr[-3000:])
    (log_line,) = [line for line in done.stdout.splitlines()
                   if line.startswith("log of Ray and Spark ")]
    log_path = log_line.split()[-1]
    assert os.path.isfile(log_path), log_line
    try:
        with open(log_path) as handle:
            logged = handle.read()
        assert "NativeCodeLoader" in logged and "Token authentication" in logged, logged[-3000:]
    finally:
        shutil.rmtree(os.path.dirname(log_path), ignore_errors=True)  # a new folder per run
