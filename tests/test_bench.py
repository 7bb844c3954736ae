"""The benchmark's checks and arithmetic (no timing asserted), and its CLI entry."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import report  # noqa: E402


def _logits(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [f"/img_{i}.jpg" for i in range(n)], rng.normal(0, 5, (n, 10)).astype(np.float32)


def test_equality_check_catches_lost_rows_and_wrong_logits():
    paths, logits = _logits()
    assert report.check_equal((paths, logits), (paths, logits + 1e-5), "fp32")["equal"]
    assert not report.check_equal((paths, logits), (paths[:3], logits[:3]), "fp32")["equal"]
    assert not report.check_equal((paths, logits), (paths, logits + 0.1), "fp32")["equal"]
    flipped = logits.copy()
    flipped[:, 0] = logits.max(1) + 1  # every top-1 changes
    assert not report.check_equal((paths, logits), (paths, flipped), "bf16")["equal"]


def test_overhead_is_the_intercept_of_the_two_job_sizes():
    # 512 rows in 11 s and 64 rows in 2 s: 56 rows/s at the margin, 2 - 64/56 s fixed.
    config = {"images": 512, "small_rows": 64, "partitions": 4}
    results = {
        "ceiling": {"model": {"none": {"images_per_s": 64.0}}},
        "udf": {"jobs": [{"label": "small", "rows": 64, "partitions": 2,
                          "runs": [{"wall_s": 2.0, "first_result_s": 1, "model_loads": 2}] * 3},
                         {"label": "main", "rows": 512, "partitions": 4,
                          "runs": [{"wall_s": 11.0, "first_result_s": 2, "model_loads": 4}]}]},
    }
    (row,) = report.mode_rows(results, config)
    assert row["steady_images_per_s"] == pytest.approx(448 / 9, abs=0.01)
    assert row["fixed_overhead_s"] == pytest.approx(2 - 64 / (448 / 9), abs=0.01)
    assert row["small_job_overhead_vs_ceiling_s"] == pytest.approx(1.0)
    assert row["ratio_to_ceiling"] == pytest.approx(512 / 11 / 64, abs=1e-3)
    assert "| udf |" in report.markdown_table([row], results["ceiling"], config)


def test_ratios_use_the_fastest_ceiling_layout_of_the_same_optimisation():
    config = {"images": 512, "small_rows": 64, "partitions": 4}
    ceiling = {"model": {"none": {"images_per_s": 50.0, "optimize": "none"},
                         "none, 2 streams": {"images_per_s": 64.0, "optimize": "none"},
                         "freeze": {"images_per_s": 90.0, "optimize": "freeze"}}}
    assert report.best_ceilings(ceiling) == {"none": 64.0, "freeze": 90.0}
    results = {"ceiling": ceiling, "udf": {"jobs": [
        {"label": "main", "rows": 512, "partitions": 4,
         "runs": [{"wall_s": 16.0, "first_result_s": 2, "model_loads": 2}]}]}}
    (row,) = report.mode_rows(results, config)
    assert row["ratio_to_ceiling"] == pytest.approx(0.5)


def test_stream_ceiling_returns_every_output_in_input_order():
    import torch

    import contenders

    calls = []

    def runner(tensors):
        calls.append(len(tensors))
        return torch.stack(tensors).numpy() * 2

    tensors = [torch.full((3,), float(i)) for i in range(37)]
    seconds, outputs = contenders.timed_streams(runner, tensors, batch=8, streams=2,
                                                stream_threads=1)
    np.testing.assert_array_equal(outputs[:, 0], np.arange(37) * 2)
    assert seconds > 0 and max(calls) == 4  # each stream takes half of the batch


def test_bench_through_the_cli_refuses_cuda_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal cannot happen here")
    done = subprocess.run([sys.executable, "-m", "hybrid_infer.cli", "bench", "--device",
                           "cuda", "--workdir", "/tmp/hybrid_infer_bench_cli_check"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode != 0
    assert "no CUDA GPU" in done.stderr
