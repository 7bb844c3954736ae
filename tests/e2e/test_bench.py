"""The benchmark's checks and arithmetic (no timing asserted), its deadline on each
contender, and its entry points (the CLI, benchmarks/run.py, an installed wheel)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import psutil
import pytest

from hybrid_infer.bench import harness, report
from hybrid_infer.bench.config import CONTENDERS, Contender, parse_args

from paths import REPO


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

    from hybrid_infer.bench.contenders import ceiling

    calls = []

    def runner(tensors):
        calls.append(len(tensors))
        return torch.stack(tensors).numpy() * 2

    tensors = [torch.full((3,), float(i)) for i in range(37)]
    seconds, outputs = ceiling.timed_streams(runner, tensors, batch=8, streams=2,
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


HANGING_CONTENDER = textwrap.dedent("""
    import os, subprocess, sys, time

    def run(config):
        # a child of its own (as Spark's JVM or Ray's raylet would be), then silence
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.path.join(config.work_dir, "child.pid"), "w") as handle:
            handle.write(str(child.pid))
        time.sleep(600)
""")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_contender_that_hangs_silently_is_killed_at_its_timeout(tmp_path, monkeypatch):
    package = tmp_path / "benchfixtures"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "hang.py").write_text(HANGING_CONTENDER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setitem(CONTENDERS, "hang", Contender("benchfixtures.hang"))
    args = parse_args(["--contenders", "hang", "--timeout", "5", "--images", "4",
                       "--workdir", str(tmp_path / "work")])
    started = time.time()
    result = harness.run_contender("hang", args, str(tmp_path), str(tmp_path / "run"))
    elapsed = time.time() - started
    assert result["failed"] and result["timed_out"], result
    assert "timed out after 5 s" in result["reason"]
    assert "timed out after 5 s" in open(result["log"]).read()
    assert 5 <= elapsed < 40, elapsed
    child = int((tmp_path / "run" / "hang" / "child.pid").read_text())
    assert _gone(child), "the contender's own child outlived the deadline"


def test_bench_runs_from_an_installed_wheel_outside_the_checkout(tmp_path, wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith("entry_points.txt"))
    assert "hybrid-infer = hybrid_infer.cli:main" in entry_points
    for needed in ("harness.py", "worker.py", "config.py", "process.py",
                   "contenders/ceiling.py", "contenders/hybrid.py"):
        assert f"hybrid_infer/bench/{needed}" in names, needed
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # The wheel's package, not this checkout's: PYTHONPATH precedes the venv's
    # editable install, and the cwd is outside the repository.
    cli = ("import sys, hybrid_infer; print('package at', hybrid_infer.__file__); "
           "from hybrid_infer.cli import main; sys.exit(main())")
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "cwd"
    work.mkdir()
    done = subprocess.run([sys.executable, "-c", cli, "bench", "--help"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"package at {site}" in done.stdout and "--timeout" in done.stdout
    # one real contender end to end: the harness starts it from the wheel too
    done = subprocess.run(
        [sys.executable, "-c", cli, "bench", "--contenders", "ceiling", "--images", "4",
         "--small-rows", "4", "--sweep-sizes", "", "--sweep-partitions", "",
         "--optimize", "none", "--threads", "1", "--workdir", str(tmp_path / "bench"),
         "--timeout", "300"], cwd=work, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    written = sorted(os.listdir(work / "bench_results"))
    assert [n.rsplit(".", 1)[1] for n in written] == ["json", "md", "png"], written


def test_benchmarks_run_py_stays_an_entry_point():
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--help"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    assert "--contenders" in done.stdout and "benchmarks/results" in done.stdout


def test_every_contender_runs_on_its_defaults_unless_one_tuning_is_given_to_all():
    assert parse_args([]).threads is None and parse_args([]).actors is None
    untuned = report.tuning_line({"threads": None, "actors": None})
    assert untuned.startswith("Tuning: none") and "own defaults" in untuned
    tuned = report.tuning_line({"threads": 2, "actors": None})
    assert "every contender alike: threads=2" in tuned
    # the forward pass: the engine's modes on the device's defaults (CPU: fp32,
    # channels_last), a user's recipe on the plain module unless it is given to all
    plain, given = parse_args([]), parse_args(["--no-channels-last", "--precision", "bf16"])
    assert plain.forward(CONTENDERS["hybrid"]) == ("fp32", True)
    assert plain.forward(CONTENDERS["predict_batch_udf"]) == ("fp32", False)
    assert parse_args(["--channels-last"]).forward(CONTENDERS["ray_data"]) == ("fp32", True)
    assert {given.forward(CONTENDERS[name]) for name in ("hybrid", "predict_batch_udf")} \
        == {("bf16", False)}
    assert "plain module" in report.tuning_line(plain.as_dict())
    assert "channels_last=False" in report.tuning_line(given.as_dict())
    config = {"images": 64, "small_rows": 8, "partitions": 2}
    job = {"label": "main", "rows": 64, "partitions": 2}
    results = {name: {"jobs": [{**job, "runs": [{"wall_s": wall, "first_result_s": 1,
                                                 "model_loads": 1}]}]}
               for name, wall in (("predict_batch_udf", 4.0), ("hybrid_optimized", 2.0))}
    rows = {row["mode"]: row for row in report.mode_rows(results, config)}
    assert rows["hybrid_optimized"]["ratio_to_predict_batch_udf"] == 2.0
    assert "x predict_batch_udf" in report.markdown_table(list(rows.values()), {}, config)
