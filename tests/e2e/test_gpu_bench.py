"""benchmarks/gpu_actor.py on CPU with small numbers: one run end to end, JSON and Markdown
with honest figures (succeeded rows only, warm-up excluded, the device path against the
CPU path, both image sets described), and a failing row fails the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from paths import REPO as ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_actor.py")


def test_gpu_actor_benchmark_end_to_end_on_cpu(tmp_path):
    out = str(tmp_path / "gpu_actor")
    command = [sys.executable, SCRIPT, "--quick", "--device", "cpu", "--images", "32",
               "--unique", "8", "--mix-images", "12", "--callers", "2", "--rows", "8",
               "--actor-seconds", "1", "--check-images", "8", "--seed-tasks", "2",
               "--cpu-workers", "1,2", "--seconds", "0.3", "--out", out]
    # Run from elsewhere: the script must find the repository itself, as on the GPU machine.
    result = subprocess.run(command, cwd=str(tmp_path), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(out + ".json") as handle:
        results = json.load(handle)
    assert results["config"]["images"] == 32 and results["config"]["device"] == "cpu"
    assert results["problems"] == [] and results["complete"] is True
    generated, mix = results["sets"]["generated"], results["sets"]["mix"]
    assert generated["rows"] == 32 and generated["distinct"] == 8
    assert set(generated["distinct_files_by_kind"]) == {"JPEG baseline 4:2:0"}
    assert mix["rows"] == 12 and {"corrupt", "JPEG baseline 4:4:4", "JPEG baseline greyscale",
                                  "JPEG progressive 4:2:0"} <= set(mix["distinct_files_by_kind"])
    for name in ("today_defaults", "device_path", "device_path_mix"):
        run = results["actor"][name]
        assert run["unexpected"] == 0 and run["seconds"] >= 1.0, run
        assert run["warmup_rows"] >= 2 * run["batch_size"], run  # two full model batches
        # Throughput is succeeded rows over the timed window; the counters are the window's.
        assert abs(run["images_per_s"] - run["succeeded"] / run["seconds"]) < 1e-6
        assert run["rows"] == run["succeeded"] + run["failed"]
        assert 0 < run["counters"]["rows"] <= run["rows"]  # rows that reached the model
    assert results["actor"]["device_path"]["decode"] == "gpu"
    assert results["actor"]["device_path"]["jpeg_decoder"] in ("torchvision", "torchcodec")
    assert results["actor"]["device_path"]["failed"] == 0
    assert results["actor"]["device_path_mix"]["failed"] > 0  # the corrupt files, as expected
    assert results["actor"]["today_defaults"]["decode"].startswith("cpu")
    for name in ("generated", "mix"):
        check = results["agreement"][name]
        assert check["rows"] == 8 and check["error_mismatches"] == 0
        assert check["top1_agreement"] >= 0.9 and check["max_logit_difference"] is not None
    assert results["model_only"] and all(v["images_per_s"] > 0
                                         for v in results["model_only"].values())
    for name in ("1_task", "2_tasks"):
        assert results["seed_recipe"][name]["rows"] == 32
    for kind in ("processes", "threads"):
        assert set(results["cpu_decode_uint8"][kind]) == {"1", "2"}
    assert results["ratios"]["device_path_over_today"] > 0
    markdown = open(out + ".md").read()
    assert "| actor, device_path_mix (mix set" in markdown and "seed recipe, 2_tasks" in markdown
    assert "top-1 agreement" in markdown and "mix set: 12 rows" in markdown


def test_the_run_fails_when_a_row_of_a_valid_file_fails():
    """run_actor's count of unexpected rows is what fails a run: a row that should decode
    but fails is counted, with its reason."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_actor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from hybrid_infer.models import ModelSpec
    from hybrid_infer.pool.settings import ActorSettings
    from hybrid_infer.weights import state_dict_to_arrays

    model = ModelSpec("mobilenet_v3_small", weights="random", seed=0)
    arrays = state_dict_to_arrays(model.load_state_dict())
    blobs = [b"\xff\xd8 claimed valid but is not"] * 4
    run = module.run_actor(model, arrays, ActorSettings(decode="gpu", torch_threads=1), blobs,
                           [False] * 4, callers=1, rows=4, seconds=0.2)
    assert run["succeeded"] == 0 and run["images_per_s"] == 0
    assert run["unexpected"] == run["failed"] > 0
    assert any("corrupt image header" in reason for reason in run["unexpected_reasons"])
