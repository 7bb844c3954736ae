"""benchmarks/gpu_actor.py --quick on CPU: one run, JSON and Markdown with sane figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from paths import REPO as ROOT


def test_gpu_actor_benchmark_quick(tmp_path):
    out = str(tmp_path / "gpu_actor")
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_actor.py"), "--quick",
               "--images", "32", "--unique", "8", "--callers", "4", "--rows", "8",
               "--cpu-workers", "1,2", "--seconds", "0.3", "--out", out]
    # Run from elsewhere: the script must find the repository itself, as on the GPU machine.
    result = subprocess.run(command, cwd=str(tmp_path), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(out + ".json") as handle:
        results = json.load(handle)
    assert results["config"]["images"] == 32 and results["config"]["device"] == "cpu"
    for name in ("today_defaults", "device_path"):
        run = results["actor"][name]
        assert run["rows_returned"] == 32 and run["rows_failed"] == 0, run
        assert run["images_per_s"] > 0
    assert results["actor"]["device_path"]["decode"] == "gpu"
    assert results["actor"]["today_defaults"]["decode"].startswith("cpu")
    assert results["model_only"] and all(v["images_per_s"] > 0
                                         for v in results["model_only"].values())
    for name in ("1_task", "4_tasks"):
        assert results["seed_recipe"][name]["rows"] == 32
        assert results["seed_recipe"][name]["images_per_s"] > 0
    for kind in ("processes", "threads"):
        assert set(results["cpu_decode_uint8"][kind]) == {"1", "2"}
        assert all(v > 0 for v in results["cpu_decode_uint8"][kind].values())
    ratios = results["ratios"]
    assert ratios["device_path_over_today"] > 0 and ratios["device_path_over_seed_best"] > 0
    markdown = open(out + ".md").read()
    assert "| actor, device_path" in markdown and "seed recipe, 4_tasks" in markdown
