"""One GPU actor, fed from JPEG bytes: the actor against its own model ceiling and the
seed recipe, in one run over the same images (issue 11). No Ray, no Spark, no Java:
Python 3.12 with torch, torchvision, pillow, pyarrow, numpy, pandas and psutil is enough.

On the GPU machine, from the repository root (nothing to install; this script puts the
repository on sys.path itself):

    python3 benchmarks/gpu_actor.py --device cuda --model resnet50 --images 8192 \
        --out benchmarks/results/gpu_actor_h200

On a CPU machine, small sizes in under 3 minutes (what CI runs):

    python benchmarks/gpu_actor.py --quick --out /tmp/gpu_actor_quick

It generates its own JPEGs (hybrid_infer.demo_data, 200-700 px), builds the real
InferenceActor directly and feeds it from `--callers` threads, each sending
`--rows`-row Arrow requests (32 x 64: what 16 Spark tasks with 2 batches in flight
send). Reported, as images/s: the actor with today's defaults (batch 32, fp32, PIL in
2 decode threads) and with the device path (ActorSettings() defaults: decode on the
device, batch 256, bf16 + channels_last on CUDA); the model alone on tensors already on
the device (fp32 and bf16 + channels_last at the actor's batch and at 256, and
torch.compile); the seed recipe's UDF body (model rebuilt per call, DataLoader with
workers, batch 500, fp32) as 1 task and as 4 concurrent processes; CPU decode to uint8
on 1..N worker processes (and threads); and the ratios. Writes OUT.json and OUT.md.
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
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

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

def run_actor(spec, arrays, settings, blobs: list[bytes], callers: int, rows: int,
              legacy: bool = False) -> dict:
    from hybrid_infer.actor.inference import InferenceActor, RequestOptions

    started = time.perf_counter()
    actor = InferenceActor(spec, arrays, settings, "bench", 0)
    if legacy:  # today's data path: PIL + ImageNet transform in the actor's decode threads
        actor.decode = "cpu"
    build_s = time.perf_counter() - started
    requests = [pa.RecordBatch.from_arrays([pa.array(blobs[i:i + rows], pa.binary())],
                                           ["content"]) for i in range(0, len(blobs), rows)]
    options = RequestOptions()
    warm = actor.infer(requests[0], options)  # first-call costs out of the timing
    assert warm.num_rows == requests[0].num_rows
    lock = threading.Lock()
    cursor = iter(range(len(requests)))
    returned, failed = [0], [0]

    def caller():
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            out = actor.infer(requests[index], options)
            succeeded = out.column("error").null_count
            with lock:
                returned[0] += out.num_rows
                failed[0] += out.num_rows - succeeded

    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(lambda _: caller(), range(callers)))
    seconds = time.perf_counter() - started
    result = {"images_per_s": len(blobs) / seconds, "seconds": seconds, "rows": len(blobs),
              "rows_returned": returned[0], "rows_failed": failed[0], "build_s": build_s,
              "decode": "cpu (legacy threads)" if legacy else getattr(actor, "decode", "cpu"),
              "batch_size": actor.settings.batch_size, "precision": actor.settings.precision,
              "channels_last": actor.settings.channels_last, "device": actor.runner.device,
              "cpu_decoded_rows": getattr(actor.pipeline.stats, "cpu_decoded_rows", 0),
              "device_decode_failures": getattr(actor.pipeline.stats, "device_decode_failures", 0)}
    if getattr(actor, "_cpu_pool", None) is not None:
        actor._cpu_pool.shutdown()
    return result


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
    from hybrid_infer.actor.gpu_decode import CPU_CHUNK, CpuDecodePool
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
    parser.add_argument("--callers", type=int, default=None, help="default 32 (--quick 4)")
    parser.add_argument("--rows", type=int, default=None, help="rows per request (default 64, --quick 16)")
    parser.add_argument("--cpu-workers", default=None,
                        help="comma-separated worker counts (default 1,2,4,8,15; --quick 1,2)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="per model-only measurement (default 5, --quick 1)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "gpu_actor"),
                        help="output path without extension: writes OUT.json and OUT.md")
    args = parser.parse_args(argv)

    import torch

    from hybrid_infer.actor.runner import resolve_device
    from hybrid_infer.pool.settings import ActorSettings

    quick = args.quick
    device = resolve_device(args.device)
    model_name = args.model or ("mobilenet_v3_small" if quick else "resnet50")
    count = args.images or (64 if quick else 8192)
    unique = args.unique or (16 if quick else 1024)
    callers = args.callers or (4 if quick else 32)
    rows = args.rows or (16 if quick else 64)
    seconds = args.seconds or (1.0 if quick else 5.0)
    cores = len(os.sched_getaffinity(0))
    workers_list = ([int(w) for w in args.cpu_workers.split(",")] if args.cpu_workers
                    else ([1, 2] if quick else sorted({1, 2, 4, 8, max(1, cores - 1)})))
    results: dict = {"config": {
        "device": device, "model": model_name, "images": count, "unique_images": unique,
        "callers": callers, "rows_per_request": rows, "quick": quick,
        "torch": torch.__version__, "python": platform.python_version(), "cores": cores,
        "gpu": torch.cuda.get_device_name(0) if device != "cpu" else None}}
    total = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        blobs = make_images(count, unique, workdir)
        results["config"]["mean_jpeg_kb"] = round(sum(map(len, blobs)) / len(blobs) / 1024, 1)
        spec, arrays = _model(model_name)
        print(f"{count} JPEGs, {model_name} on {device}", flush=True)

        actor = results["actor"] = {}
        legacy = ActorSettings(batch_size=32, precision="fp32", channels_last=False,
                              decode="cpu", decode_threads=2)
        actor["today_defaults"] = run_actor(spec, arrays, legacy, blobs, callers, rows,
                                            legacy=True)
        print("actor, today's defaults:", round(actor["today_defaults"]["images_per_s"], 1), flush=True)
        actor["device_path"] = run_actor(spec, arrays, ActorSettings(decode="gpu"), blobs,
                                         callers, rows)
        print("actor, device path:", round(actor["device_path"]["images_per_s"], 1), flush=True)
        if device != "cpu":
            actor["cpu_uint8_path"] = run_actor(spec, arrays, ActorSettings(decode="cpu"), blobs,
                                                callers, rows)
            print("actor, decode=cpu:", round(actor["cpu_uint8_path"]["images_per_s"], 1), flush=True)

        ceilings = results["model_only"] = {}
        small = actor["today_defaults"]["batch_size"]
        big = 256 if not quick else 32
        for batch in sorted({small, big}):
            for precision, cl in (("fp32", False), ("bf16", True)):
                if quick and precision == "bf16" and batch != small:
                    continue
                key = f"eager_{precision}{'_cl' if cl else ''}_b{batch}"
                ceilings[key] = model_ceiling(spec, device, batch, precision, cl, False, seconds)
                print(key, round(ceilings[key]["images_per_s"], 1), flush=True)
        if not quick:
            try:
                ceilings[f"compiled_bf16_cl_b{big}"] = model_ceiling(
                    spec, device, big, "bf16", True, True, seconds)
            except Exception as exc:  # no compiler toolchain: reported, not fatal
                ceilings[f"compiled_bf16_cl_b{big}"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}

        seed = results["seed_recipe"] = {}
        seed_rows = count if quick else 10_000  # one UDF call per Arrow batch (10k rows)
        seed["1_task"] = run_seed(model_name, blobs, device, 1, 1 if quick else 8, seed_rows,
                                  threads=cores)
        print("seed 1 task:", round(seed["1_task"]["images_per_s"], 1), flush=True)
        seed["4_tasks"] = run_seed(model_name, blobs, device, 4, 0 if quick else 4,
                                   seed_rows, threads=max(1, cores // 4))
        print("seed 4 tasks:", round(seed["4_tasks"]["images_per_s"], 1), flush=True)

        decode_blobs = blobs[:min(len(blobs), 48 if quick else 4096)]
        results["cpu_decode_uint8"] = {
            "processes": cpu_decode_scaling(decode_blobs, workers_list, "process"),
            "threads": cpu_decode_scaling(decode_blobs, workers_list, "thread")}
        print("cpu decode:", results["cpu_decode_uint8"], flush=True)

    results["ratios"] = _ratios(results, big)
    results["config"]["total_s"] = round(time.perf_counter() - total, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as handle:
        json.dump(results, handle, indent=2)
    with open(args.out + ".md", "w") as handle:
        handle.write(markdown(results))
    print(markdown(results))
    return results


def _ratios(results: dict, big: int) -> dict:
    actor = results["actor"]["device_path"]["images_per_s"]
    ceilings = results["model_only"]
    seed_best = max(results["seed_recipe"][k]["images_per_s"] for k in ("1_task", "4_tasks"))
    bf16 = next((v["images_per_s"] for k, v in ceilings.items()
                 if k.startswith("eager_bf16") and k.endswith(f"_b{big}")), None)
    compiled = next((v.get("images_per_s") for k, v in ceilings.items()
                     if k.startswith("compiled")), None)
    scaling = results["cpu_decode_uint8"]["processes"]
    most = max(scaling, key=int)
    return {
        "device_path_over_today": actor / results["actor"]["today_defaults"]["images_per_s"],
        "device_path_over_eager_bf16_ceiling": actor / bf16 if bf16 else None,
        "device_path_over_compiled_ceiling": actor / compiled if compiled else None,
        "device_path_over_seed_best": actor / seed_best,
        f"cpu_decode_{most}_workers_over_1": scaling[most] / scaling["1"] if "1" in scaling else None,
    }


def markdown(results: dict) -> str:
    config = results["config"]
    lines = [f"# One actor from JPEG bytes: {config['model']} on {config['device']}"
             f"{' (' + config['gpu'] + ')' if config['gpu'] else ''}", "",
             f"{config['images']} generated JPEGs ({config['unique_images']} distinct, "
             f"{config.get('mean_jpeg_kb')} KB mean), {config['callers']} callers x "
             f"{config['rows_per_request']}-row requests; torch {config['torch']}, "
             f"Python {config['python']}, {config['cores']} cores.", "",
             "| what | images/s |", "|---|---|"]
    for key, value in results["actor"].items():
        lines.append(f"| actor, {key} (decode {value['decode']}, batch {value['batch_size']}, "
                     f"{value['precision']}{', channels_last' if value['channels_last'] else ''}; "
                     f"{value['cpu_decoded_rows']} rows routed to the CPU decoder, "
                     f"{value['device_decode_failures']} refused by the device decoder) "
                     f"| {value['images_per_s']:.1f} |")
    for key, value in results["model_only"].items():
        figure = f"{value['images_per_s']:.1f}" if "images_per_s" in value else value["error"]
        lines.append(f"| model only, {key} | {figure} |")
    for key, value in results["seed_recipe"].items():
        lines.append(f"| seed recipe, {key} ({value['loader_workers']} loader workers each) "
                     f"| {value['images_per_s']:.1f} |")
    for kind, scaling in results["cpu_decode_uint8"].items():
        figures = ", ".join(f"{w}: {v:.0f}" for w, v in scaling.items())
        lines.append(f"| CPU decode to uint8, {kind} (workers: images/s) | {figures} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" if v is not None else f"| {k} | n/a |"
              for k, v in results["ratios"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
