"""One GPU actor, fed from JPEG bytes: the actor against its own model ceiling and the
seed recipe, in one run over the same images (issue 11), made honest (issue 19). No Ray,
no Spark, no Java: Python 3.12 with torch, torchvision, pillow, pyarrow, numpy, pandas
and psutil is enough.

On the GPU machine, from the repository root (nothing to install; this script puts the
repository on sys.path itself; about 6 minutes on one H100/H200):

    python3 benchmarks/gpu_actor.py --device cuda --model resnet50 --images 8192 \
        --out benchmarks/results/gpu_actor_h100

On a CPU machine, small sizes end to end (what CI runs, with smaller numbers still):

    python benchmarks/gpu_actor.py --quick --device cpu --out /tmp/gpu_actor_quick

Two image sets (their description is printed and written): the generated set
(hybrid_infer.demo_data: small 200-700 px baseline 4:2:0 JPEGs, a best case for decode)
and a realistic mix (benchmarks/photo_mix.py: 12-megapixel camera photos in 4:2:0 and
4:4:4, HD frames, greyscale, progressive, and a few corrupt files). The real
InferenceActor is built directly and fed from `--callers` threads, each sending
`--rows`-row Arrow requests (32 x 64: what 16 Spark tasks with 2 batches in flight
send); each actor run is warmed up with at least two full model batches from those
concurrent callers, then timed for at least `--actor-seconds`; images/s counts rows that
succeeded, and the actor's counters are the timed window's. Reported, as images/s: the
actor with the CPU actor's data path (batch 32, fp32, PIL in 2 decode threads) and with
the device path (ActorSettings() defaults: decode on the device, batch 256, bf16 +
channels_last on CUDA), on both sets; the device path's predictions against the CPU
path's on the same images (both fp32: top-1 agreement, largest logit difference); the
model alone on tensors already on the device (fp32 and bf16 + channels_last at the
actor's batch and at 256, and torch.compile); the seed recipe's UDF body (model rebuilt
per call, DataLoader with workers, batch 500, fp32) as 1 task and as 4 concurrent
processes; CPU decode to uint8 on 1..N worker processes (and threads); and the ratios.
Writes OUT.json and OUT.md.

The run exits 1 (after writing both files, which list the problems) when a row of a
valid file fails or a corrupt file does not, when the device and CPU paths give a row
different errors, or when their top-1 agreement is under `--min-agreement`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.join(ROOT, "benchmarks")):  # the package, and photo_mix.py
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402


def make_images(count: int, unique: int, workdir: str) -> list[bytes]:
    from hybrid_infer.demo_data import generate_jpegs

    paths = generate_jpegs(os.path.join(workdir, "jpegs"), min(unique, count), seed=11)
    blobs = [open(path, "rb").read() for path in paths]
    return [blobs[i % len(blobs)] for i in range(count)]


def _model(name: str):
    from hybrid_infer.models import ModelSpec
    from hybrid_infer.weights import state_dict_to_arrays

    spec = ModelSpec(name, weights="random", seed=0)
    return spec, state_dict_to_arrays(spec.load_state_dict())


# --- the actor, fed by concurrent callers -------------------------------------------------

def _requests(blobs: list[bytes], rows: int) -> list[pa.RecordBatch]:
    return [pa.RecordBatch.from_arrays([pa.array(blobs[i:i + rows], pa.binary())], ["content"])
            for i in range(0, len(blobs), rows)]


def _drive(actor, requests, expect_error: list[list[bool]], callers: int, *,
           until_rows: int | None = None, seconds: float | None = None) -> dict:
    """`callers` threads send the requests round-robin until `until_rows` rows are
    answered or `seconds` have passed (then each finishes the request it holds).
    Counts rows that succeeded, failed, and those whose outcome was not the expected one
    (a row of a valid file that failed, or a corrupt file that did not)."""
    from hybrid_infer.transport.protocol import RequestOptions

    options = RequestOptions()
    lock = threading.Lock()
    counts = {"requests": 0, "rows": 0, "succeeded": 0, "failed": 0, "unexpected": 0}
    reasons: dict[str, int] = {}
    turn = [0]
    started = time.perf_counter()

    def more() -> bool:
        if until_rows is not None:
            return counts["rows"] < until_rows
        return time.perf_counter() - started < seconds

    def caller():
        while True:
            with lock:
                if not more():
                    return
                index = turn[0] % len(requests)
                turn[0] += 1
            errors = actor.infer(requests[index], options).column("error").to_pylist()
            with lock:
                counts["requests"] += 1
                counts["rows"] += len(errors)
                for error, expected in zip(errors, expect_error[index]):
                    counts["failed" if error is not None else "succeeded"] += 1
                    if (error is not None) != expected:
                        counts["unexpected"] += 1
                        key = (error or "decoded a corrupt file")[:120]
                        reasons[key] = reasons.get(key, 0) + 1

    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(lambda _: caller(), range(callers)))
    counts["seconds"] = time.perf_counter() - started
    counts["unexpected_reasons"] = reasons
    return counts


#: Actor counters reported as the timed window's difference (warm-up excluded).
_COUNTERS = ("requests", "batches", "rows", "cpu_decoded_rows", "device_decode_failures",
             "device_decode_calls", "out_of_memory_reroutes", "cpu_pool_rebuilds",
             "split_retries", "decode_errors")


def run_actor(spec, arrays, settings, blobs: list[bytes], expect_error: list[bool],
              callers: int, rows: int, seconds: float, legacy: bool = False) -> dict:
    """The actor under `callers` concurrent callers: warmed up with at least two full
    model batches, then timed for at least `seconds`. images/s counts succeeded rows only;
    the actor's counters are the timed window's (warm-up excluded)."""
    from hybrid_infer.actor.batching import DecodePath
    from hybrid_infer.actor.inference import InferenceActor

    started = time.perf_counter()
    actor = InferenceActor(spec, arrays, settings, "bench", 0)
    if legacy:  # the CPU actor's data path (PIL + ImageNet transform in 2 threads) here
        actor.decode = DecodePath.THREADS
    build_s = time.perf_counter() - started
    requests = _requests(blobs, rows)
    expected = [expect_error[i:i + rows] for i in range(0, len(blobs), rows)]
    try:
        warm = _drive(actor, requests, expected, callers,
                      until_rows=max(2 * actor.settings.batch_size, callers * rows))
        before = actor.stats()
        timed = _drive(actor, requests, expected, callers, seconds=seconds)
        after = actor.stats()
    finally:
        actor.close()
    window = {name: after[name] - before[name] for name in _COUNTERS}
    return {"images_per_s": timed["succeeded"] / timed["seconds"], **timed,
            "warmup_rows": warm["rows"], "warmup_s": warm["seconds"], "build_s": build_s,
            "decode": "cpu (legacy threads)" if legacy else after["decode"],
            "jpeg_decoder": after["jpeg_decoder"], "batch_size": actor.settings.batch_size,
            "precision": actor.settings.precision, "channels_last": actor.settings.channels_last,
            "device": actor.runner.device,
            "mean_model_batch": window["rows"] / window["batches"] if window["batches"] else 0,
            "counters": window}


def _answers(actor, blobs: list[bytes], rows: int):
    from hybrid_infer.transport.protocol import RequestOptions

    predictions, errors = [], []
    for request in _requests(blobs, rows):
        out = actor.infer(request, RequestOptions())
        predictions += out.column("prediction").to_pylist()
        errors += out.column("error").to_pylist()
    return predictions, errors


def agreement(spec, arrays, blobs: list[bytes], rows: int) -> dict:
    """The device path against the CPU path (PIL) on the same images, both in fp32 so
    that only decoding differs: top-1 agreement, the largest logit difference, and rows
    whose error differs."""
    from hybrid_infer.actor.inference import InferenceActor
    from hybrid_infer.pool.settings import ActorSettings

    answers = {}
    for path in ("gpu", "cpu"):
        actor = InferenceActor(spec, arrays, ActorSettings(
            decode=path, precision="fp32", channels_last=False), "bench-check", 0)
        try:
            answers[path] = _answers(actor, blobs, rows)
        finally:
            actor.close()
    (device, device_errors), (cpu, cpu_errors) = answers["gpu"], answers["cpu"]
    both = [i for i in range(len(blobs)) if device_errors[i] is None and cpu_errors[i] is None]
    device_logits = np.array([device[i] for i in both], dtype=np.float64).reshape(len(both), -1)
    cpu_logits = np.array([cpu[i] for i in both], dtype=np.float64).reshape(len(both), -1)
    return {
        "rows": len(blobs), "compared_rows": len(both),
        "error_mismatches": sum(a != b for a, b in zip(device_errors, cpu_errors)),
        "top1_agreement": (float((device_logits.argmax(1) == cpu_logits.argmax(1)).mean())
                           if both else None),
        "max_logit_difference": float(np.abs(device_logits - cpu_logits).max()) if both else None,
        "max_abs_logit": float(np.abs(cpu_logits).max()) if both else None,
    }


# --- the model alone ----------------------------------------------------------------------

def model_ceiling(spec, device: str, batch: int, precision: str, channels_last: bool,
                  compile_: bool, seconds: float) -> dict:
    import torch

    module = spec.load_module().to(device)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    started = time.perf_counter()
    if compile_:
        module = torch.compile(module)
    inputs = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype or torch.float32)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast(device_type="cuda" if device != "cpu" else "cpu", dtype=dtype)
                if dtype is not None else torch.autocast("cpu", enabled=False))

    def step():
        with torch.inference_mode(), autocast:
            module(inputs)

    for _ in range(2):
        step()
    _sync(device)
    warm_s = time.perf_counter() - started
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done < 2:
        step()
        done += 1
        if device != "cpu" and done % 5:
            continue
        _sync(device)
    _sync(device)
    elapsed = time.perf_counter() - started
    return {"images_per_s": done * batch / elapsed, "batch": batch, "precision": precision,
            "channels_last": channels_last, "compiled": compile_, "warmup_s": warm_s}


def _sync(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize()


# --- the seed recipe's UDF body -------------------------------------------------------------

def seed_udf_body(model_name: str, state_dict, blobs: list[bytes], device: str,
                  loader_workers: int, batch_size: int = 500) -> int:
    """What one pandas-UDF call of the seed recipe does: rebuild the model, load the
    broadcast state_dict, DataLoader over the Series of bytes, fp32 forward."""
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader

    from hybrid_infer.decode import ImageDecoder
    from hybrid_infer.models import ModelSpec
    from hybrid_infer.modes.udf import ImageBytesDataset

    model = ModelSpec(model_name, weights="random").build_module()
    model.load_state_dict(state_dict)
    model.eval().to(device)
    loader = DataLoader(ImageBytesDataset(pd.Series(blobs), ImageDecoder()),
                        batch_size=batch_size, num_workers=loader_workers)
    rows = 0
    with torch.no_grad():
        for images, _ in loader:
            rows += model(images.to(device)).cpu().numpy().shape[0]
    return rows


def _seed_task(model_name, blobs, device, workers, call_rows, threads, barrier, results):
    """One Spark task's share: imports and the broadcast state_dict are ready (a Spark
    Python worker has them) before the clock starts; then one UDF call per Arrow batch."""
    import torch

    torch.set_num_threads(threads)
    state_dict = _model_state(model_name)
    if barrier is not None:
        barrier.wait()
    started = time.time()
    rows = 0
    for lo in range(0, len(blobs), call_rows):
        rows += seed_udf_body(model_name, state_dict, blobs[lo:lo + call_rows], device, workers)
    if results is None:
        return rows, started, time.time()
    results.put((rows, started, time.time()))
    return None


def _model_state(model_name: str):
    from hybrid_infer.models import ModelSpec

    return ModelSpec(model_name, weights="random", seed=0).load_state_dict()


def run_seed(model_name: str, blobs, device: str, tasks: int, workers: int,
             call_rows: int, threads: int) -> dict:
    """The recipe as `tasks` concurrent processes sharing the device (as Spark tasks)."""
    shares = [blobs[i::tasks] for i in range(tasks)]
    if tasks == 1:
        results = [_seed_task(model_name, shares[0], device, workers, call_rows, threads,
                              None, None)]
    else:
        context = multiprocessing.get_context("spawn")
        barrier, queue = context.Barrier(tasks), context.Queue()
        processes = [context.Process(target=_seed_task, args=(
            model_name, share, device, workers, call_rows, threads, barrier, queue))
            for share in shares]
        for process in processes:
            process.start()
        results = [queue.get(timeout=3600) for _ in processes]
        for process in processes:
            process.join()
    rows = sum(r for r, _, _ in results)
    wall = max(end for _, _, end in results) - min(start for _, start, _ in results)
    assert rows == len(blobs), (rows, len(blobs))
    return {"images_per_s": rows / wall, "tasks": tasks, "loader_workers": workers,
            "sum_of_task_rates": sum(r / (end - start) for r, start, end in results),
            "seconds": wall, "rows": rows}


# --- CPU decode scaling ---------------------------------------------------------------------

def cpu_decode_scaling(blobs: list[bytes], workers_list: list[int], kind: str) -> dict:
    from hybrid_infer.actor.cpu_decode import CPU_CHUNK, CpuDecodePool
    from hybrid_infer.decode import Preprocess

    preprocess = Preprocess()
    out = {}
    for workers in workers_list:
        pool = CpuDecodePool(workers, kind=kind)
        try:
            pool.warm_up()
            started = time.perf_counter()
            futures = [pool.submit(blobs[i:i + CPU_CHUNK], preprocess)
                       for i in range(0, len(blobs), CPU_CHUNK)]
            decoded = sum(len(f.result()[1]) for f in futures)
            seconds = time.perf_counter() - started
        finally:
            pool.shutdown()
        assert decoded == len(blobs)
        out[str(workers)] = decoded / seconds
    return out


# --- the run ----------------------------------------------------------------------------------

def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a CPU machine (under 3 minutes)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--model", default=None,
                        help="default: resnet50 (--quick: mobilenet_v3_small)")
    parser.add_argument("--images", type=int, default=None, help="default: 8192 (--quick 64)")
    parser.add_argument("--unique", type=int, default=None,
                        help="distinct generated JPEGs (default 1024, --quick 16)")
    parser.add_argument("--mix-images", type=int, default=None,
                        help="rows of the realistic mix (default 2048, --quick 24; 0: none)")
    parser.add_argument("--mix-scale", type=float, default=None,
                        help="camera photos' size as a share of 4000x3000 (default 1, --quick 0.3)")
    parser.add_argument("--callers", type=int, default=None, help="default 32 (--quick 4)")
    parser.add_argument("--rows", type=int, default=None,
                        help="rows per request (default 64, --quick 16)")
    parser.add_argument("--actor-seconds", type=float, default=None,
                        help="timed window per actor run, after warm-up (default 20, --quick 2)")
    parser.add_argument("--check-images", type=int, default=None,
                        help="rows of each set compared between the device and CPU paths "
                             "(default 512, --quick 16)")
    parser.add_argument("--min-agreement", type=float, default=0.9,
                        help="top-1 agreement below this fails the run (default 0.9)")
    parser.add_argument("--seed-tasks", type=int, default=4,
                        help="concurrent processes of the seed recipe's second run (default 4)")
    parser.add_argument("--cpu-workers", default=None,
                        help="comma-separated worker counts (default 1,2,4,8,15; --quick 1,2)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="per model-only measurement (default 5, --quick 1)")
    parser.add_argument("--skip", default="",
                        help="comma-separated parts to leave out when time is short: "
                             "compile, seed, cpu-decode")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "gpu_actor"),
                        help="output path without extension: writes OUT.json and OUT.md")
    args = parser.parse_args(argv)

    import torch

    from hybrid_infer.actor.runner import resolve_device
    from hybrid_infer.pool.settings import ActorSettings
    from photo_mix import describe, photo_mix, summary

    quick = args.quick
    device = resolve_device(args.device)
    model_name = args.model or ("mobilenet_v3_small" if quick else "resnet50")
    count = args.images or (64 if quick else 8192)
    unique = args.unique or (16 if quick else 1024)
    mix_count = args.mix_images if args.mix_images is not None else (24 if quick else 2048)
    mix_scale = args.mix_scale or (0.3 if quick else 1.0)
    callers = args.callers or (4 if quick else 32)
    rows = args.rows or (16 if quick else 64)
    actor_seconds = args.actor_seconds or (2.0 if quick else 20.0)
    check_rows = args.check_images or (16 if quick else 512)
    skip = set(filter(None, (args.skip or "").split(",")))
    seconds = args.seconds or (1.0 if quick else 5.0)
    cores = len(os.sched_getaffinity(0))
    workers_list = ([int(w) for w in args.cpu_workers.split(",")] if args.cpu_workers
                    else ([1, 2] if quick else sorted({1, 2, 4, 8, max(1, cores - 1)})))
    results: dict = {"config": {
        "device": device, "model": model_name, "images": count, "unique_images": unique,
        "mix_images": mix_count, "callers": callers, "rows_per_request": rows,
        "actor_seconds": actor_seconds, "quick": quick,
        "torch": torch.__version__, "python": platform.python_version(), "cores": cores,
        "gpu": torch.cuda.get_device_name(0) if device != "cpu" else None}}
    problems: list[str] = []
    total = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        sets = {"generated": (make_images(count, unique, workdir), None)}
        if mix_count:
            blobs, kinds = photo_mix(mix_count, 2 if quick else 4, scale=mix_scale)
            sets["mix"] = (blobs, [kind == "corrupt" for kind in kinds])
        results["sets"] = {}
        for name, (blobs, _) in sets.items():
            results["sets"][name] = describe(blobs)
            _progress(total, f"{name} set: {summary(results['sets'][name])}")
        results["config"]["mean_jpeg_kb"] = results["sets"]["generated"]["mean_kb"]
        spec, arrays = _model(model_name)
        _progress(total, f"{model_name} on {device}")

        actor = results["actor"] = {}
        legacy = ActorSettings(batch_size=32, precision="fp32", channels_last=False,
                              decode="cpu", decode_threads=2)
        runs = [("today_defaults", "generated", legacy, True),
                ("device_path", "generated", ActorSettings(decode="gpu"), False)]
        if device != "cpu":
            runs.append(("cpu_uint8_path", "generated", ActorSettings(decode="cpu"), False))
        if "mix" in sets:
            runs.append(("device_path_mix", "mix", ActorSettings(decode="gpu"), False))
            if device != "cpu":
                runs.append(("cpu_uint8_path_mix", "mix", ActorSettings(decode="cpu"), False))
        for key, set_name, settings, is_legacy in runs:
            blobs, corrupt = sets[set_name]
            run = actor[key] = _guarded(problems, f"actor {key}", lambda: run_actor(
                spec, arrays, settings, blobs, corrupt or [False] * len(blobs), callers, rows,
                actor_seconds, legacy=is_legacy))
            run["set"] = set_name
            _save(args.out, results, problems)
            if "error" in run:
                continue
            _progress(total, f"actor, {key}: {run['images_per_s']:.1f} images/s "
                      f"({run['succeeded']} rows succeeded, {run['failed']} failed, "
                      f"{run['unexpected']} unexpectedly)")
            if run["unexpected"]:
                problems.append(f"actor {key}: {run['unexpected']} rows of the {set_name} set "
                                f"did not get the expected answer: {run['unexpected_reasons']}")

        checks = results["agreement"] = {}
        for name, (blobs, _) in sets.items():
            check = checks[name] = _guarded(problems, f"agreement on {name}", lambda: agreement(
                spec, arrays, blobs[:check_rows], rows))
            _progress(total, f"device vs CPU path, {name}: {check}")
            if check.get("error_mismatches"):
                problems.append(f"{name}: {check['error_mismatches']} rows got a "
                                "different error on the device path than on the CPU path")
            if "error" not in check and (check["top1_agreement"] or 0.0) < args.min_agreement:
                problems.append(f"{name}: top-1 agreement {check['top1_agreement']} "
                                f"between the device and CPU paths is under {args.min_agreement}")
        _save(args.out, results, problems)
        blobs = sets["generated"][0]

        ceilings = results["model_only"] = {}
        small = actor["today_defaults"].get("batch_size", 32)
        big = 256 if not quick else 32
        for batch in sorted({small, big}):
            for precision, cl in (("fp32", False), ("bf16", True)):
                if quick and precision == "bf16" and batch != small:
                    continue
                key = f"eager_{precision}{'_cl' if cl else ''}_b{batch}"
                ceilings[key] = _guarded(problems, f"model only, {key}", lambda: model_ceiling(
                    spec, device, batch, precision, cl, False, seconds))
                _progress(total, key, _figure(ceilings[key]))
        if not quick and "compile" not in skip:
            try:  # no compiler toolchain: reported, not a problem of the actor
                ceilings[f"compiled_bf16_cl_b{big}"] = model_ceiling(
                    spec, device, big, "bf16", True, True, seconds)
            except Exception as exc:
                ceilings[f"compiled_bf16_cl_b{big}"] = {
                    "error": f"{type(exc).__name__}: {exc}"[:300]}
        _save(args.out, results, problems)

        seed = results["seed_recipe"] = {}
        if "seed" not in skip:
            seed_rows = count if quick else 10_000  # one UDF call per Arrow batch (10k rows)
            seed["1_task"] = _guarded(problems, "seed recipe, 1 task", lambda: run_seed(
                model_name, blobs, device, 1, 1 if quick else 8, seed_rows, threads=cores))
            _progress(total, "seed 1 task:", _figure(seed["1_task"]))
            tasks = args.seed_tasks
            seed[f"{tasks}_tasks"] = _guarded(
                problems, f"seed recipe, {tasks} tasks", lambda: run_seed(
                    model_name, blobs, device, tasks, 0 if quick else 4, seed_rows,
                    threads=max(1, cores // tasks)))
            _progress(total, f"seed {tasks} tasks:", _figure(seed[f"{tasks}_tasks"]))
            _save(args.out, results, problems)

        results["cpu_decode_uint8"] = {}
        if "cpu-decode" not in skip:
            decode_blobs = blobs[:min(len(blobs), 48 if quick else 1024)]
            for kind, name in (("process", "processes"), ("thread", "threads")):
                results["cpu_decode_uint8"][name] = _guarded(
                    problems, f"CPU decode scaling ({name})",
                    lambda: cpu_decode_scaling(decode_blobs, workers_list, kind))
            _progress(total, "cpu decode:", results["cpu_decode_uint8"])

    results["ratios"] = _ratios(results, big)
    results["config"]["total_s"] = round(time.perf_counter() - total, 1)
    _save(args.out, results, problems, complete=True)
    with open(args.out + ".md", "w") as handle:
        handle.write(markdown(results))
    print(markdown(results))
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return results


def _guarded(problems: list[str], what: str, measure) -> dict:
    """measure(), or {"error": ...} with the failure added to `problems`: one part that
    fails does not lose the others (the run still exits 1)."""
    try:
        return measure()
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"[:500]
        problems.append(f"{what} failed: {message}")
        print(f"{what} FAILED: {message}", file=sys.stderr, flush=True)
        return {"error": message}


def _save(out: str, results: dict, problems: list[str], complete: bool = False) -> None:
    """OUT.json now: a run cut short (a device's time limit) keeps what it measured."""
    results["problems"] = problems
    results["complete"] = complete
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as handle:
        json.dump(results, handle, indent=2)


def _progress(since: float, *parts) -> None:
    """A progress line, with the seconds since the run started (where the time goes)."""
    print(f"[{time.perf_counter() - since:6.1f} s]", *parts, flush=True)


def _rate(entry) -> float | None:
    return entry.get("images_per_s") if isinstance(entry, dict) else None


def _ratio(numerator, denominator) -> float | None:
    return numerator / denominator if numerator and denominator else None


def _ratios(results: dict, big: int) -> dict:
    device = _rate(results["actor"].get("device_path"))
    ceilings = results["model_only"]
    seeds = [_rate(run) for run in results["seed_recipe"].values() if _rate(run)]
    bf16 = next((_rate(v) for k, v in ceilings.items()
                 if k.startswith("eager_bf16") and k.endswith(f"_b{big}")), None)
    compiled = next((_rate(v) for k, v in ceilings.items() if k.startswith("compiled")), None)
    scaling = results["cpu_decode_uint8"].get("processes") or {}
    scaling = {} if "error" in scaling else scaling
    most = max(scaling, key=int) if scaling else "n"
    return {
        "device_path_over_today": _ratio(device, _rate(results["actor"].get("today_defaults"))),
        "device_path_over_eager_bf16_ceiling": _ratio(device, bf16),
        "device_path_over_compiled_ceiling": _ratio(device, compiled),
        "device_path_over_seed_best": _ratio(device, max(seeds) if seeds else None),
        f"cpu_decode_{most}_workers_over_1": _ratio(scaling.get(most), scaling.get("1")),
    }


def _figure(entry: dict) -> str:
    if "images_per_s" in entry:
        return f"{entry['images_per_s']:.1f}"
    return f"failed: {entry['error']}"


def markdown(results: dict) -> str:
    from photo_mix import summary

    config = results["config"]
    lines = [f"# One actor from JPEG bytes: {config['model']} on {config['device']}"
             f"{' (' + config['gpu'] + ')' if config['gpu'] else ''}", "",
             f"{config['callers']} callers x {config['rows_per_request']}-row requests; each "
             f"actor run warmed up with at least two full model batches, then timed for "
             f"{config['actor_seconds']} s; images/s counts succeeded rows only. torch "
             f"{config['torch']}, Python {config['python']}, {config['cores']} cores.", ""]
    lines += [f"- {name} set: {summary(description)}"
              for name, description in results["sets"].items()]
    lines += ["", "| what | images/s |", "|---|---|"]
    for key, value in results["actor"].items():
        if "error" in value:
            lines.append(f"| actor, {key} ({value['set']} set) | failed: {value['error']} |")
            continue
        lines.append(
            f"| actor, {key} ({value['set']} set; decode {value['decode']}"
            f"{', ' + value['jpeg_decoder'] if value.get('jpeg_decoder') else ''}, batch "
            f"{value['batch_size']} (mean {value['mean_model_batch']:.0f}), "
            f"{value['precision']}{', channels_last' if value['channels_last'] else ''}; "
            f"{value['succeeded']} rows ok, {value['failed']} failed; "
            f"{value['counters']['cpu_decoded_rows']} routed to the CPU decoder, "
            f"{value['counters']['device_decode_failures']} refused by the device decoder, "
            f"{value['counters']['out_of_memory_reroutes']} rerouted after out-of-memory) "
            f"| {value['images_per_s']:.1f} |")
    for key, value in results["model_only"].items():
        lines.append(f"| model only, {key} | {_figure(value)} |")
    for key, value in results["seed_recipe"].items():
        lines.append(f"| seed recipe, {key} ({value.get('loader_workers')} loader workers each) "
                     f"| {_figure(value)} |")
    for kind, scaling in results["cpu_decode_uint8"].items():
        figures = scaling["error"] if "error" in scaling else ", ".join(
            f"{w}: {v:.0f}" for w, v in scaling.items())
        lines.append(f"| CPU decode to uint8, {kind} (workers: images/s) | {figures} |")
    lines += ["", "Device path against the CPU path (PIL), both fp32, same images:", "",
              "| set | rows compared | top-1 agreement | largest logit difference "
              "(largest logit) | rows with a different error |", "|---|---|---|---|---|"]
    for name, check in results["agreement"].items():
        if "error" in check:
            lines.append(f"| {name} | failed: {check['error']} | | | |")
            continue
        agree = "n/a" if check["top1_agreement"] is None else f"{check['top1_agreement']:.4f}"
        diff = ("n/a" if check["max_logit_difference"] is None else
                f"{check['max_logit_difference']:.4g} ({check['max_abs_logit']:.4g})")
        lines.append(f"| {name} | {check['compared_rows']} | {agree} | {diff} "
                     f"| {check['error_mismatches']} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" if v is not None else f"| {k} | n/a |"
              for k, v in results["ratios"].items()]
    if results.get("problems"):
        lines += ["", "**The run failed:**", ""] + [f"- {p}" for p in results["problems"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(1 if main()["problems"] else 0)
