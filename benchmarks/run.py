"""Benchmark every mode side by side over the same generated JPEGs, against the ceiling.

    python benchmarks/run.py                      # resnet18, 512 images, CPU (~9 min, 2 cores)
    python benchmarks/run.py --model resnet50 --images 256 --optimize freeze
    python benchmarks/run.py --full               # size sweep to 4096, partitions 2..32
    python benchmarks/run.py --device cuda        # bf16 autocast + channels_last on a GPU
    python benchmarks/run.py --render results/bench-....json   # redraw an earlier run
    hybrid-infer bench ...                        # the same, through the CLI

Each contender (see contenders.py) runs in its own process; this one generates the
images once, starts the contenders one after another, samples the peak memory of each
one's whole process tree, checks that every contender returned the same rows with the
same logits (before printing any figure), then writes results/bench-<stamp>.json, .md
and .png (and latest.*).

Warm-up, stated: the ceiling runs one untimed batch first (and runs twice, first and
last, keeping the faster, as the shared machine's load drifts); the Spark and Ray Data
contenders run one untimed 64-image job first (starts Python workers; predict_batch_udf
caches its model there); hybrid's first job is reported as "cold" (pool start and
model load included) and its second as "warm".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [p for p in (REPO, HERE) if p not in sys.path]

import report  # noqa: E402
from memory import PeakMemory  # noqa: E402

#: name -> (runner in contenders.py, uses the optimised model)
CONTENDERS = {
    "ceiling": ("ceiling", False),
    "ceiling_end": ("ceiling", False),  # run again last: the machine's load drifts
    "udf": ("udf", False),
    "predict_batch_udf": ("predict_batch_udf", False),
    "ray_data": ("ray_data", False),
    "hybrid": ("hybrid", False),
    "hybrid_optimized": ("hybrid", True),
    "raydp": ("raydp", False),
}
DEFAULT_CONTENDERS = [name for name in CONTENDERS if name != "ceiling_end"]
#: Runners whose first main job starts a pool (reported "cold") and second reuses it.
POOL_RUNNERS = ("hybrid", "raydp")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="hybrid-infer bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=512, help="images in the main job")
    parser.add_argument("--partitions", type=int, default=4,
                        help="Spark partitions of the main job (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads for the model (per process for ceiling, pool "
                             "and Ray Data; split across task slots for predict_batch_udf)")
    parser.add_argument("--actors", type=int, default=1,
                        help="hybrid pool actors; the --threads are split between them "
                             "(they share one object-store copy of the weights)")
    parser.add_argument("--streams", type=int, default=None,
                        help="model threads per hybrid actor (default: the engine's, one "
                             "single-threaded stream per thread on CPU); the ceiling also "
                             "runs this layout")
    parser.add_argument("--spark-slots", type=int, default=2, help="local[N] task slots")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                        help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                        default=None, help="default: on for cuda, off for cpu")
    parser.add_argument("--optimize", default="freeze", choices=["none", "freeze", "compile"],
                        help="the one-time optimisation of the hybrid_optimized pool")
    parser.add_argument("--small-jobs", type=int, default=8,
                        help="repeated small jobs per mode (fixed overhead)")
    parser.add_argument("--small-rows", type=int, default=64)
    parser.add_argument("--sweep-sizes", default="256",
                        help="extra job sizes, comma separated ('' for none)")
    parser.add_argument("--sweep-partitions", default="16",
                        help="extra partition counts for the main job size ('' for none)")
    parser.add_argument("--full", action="store_true",
                        help="bigger sweeps: sizes 256,1024,4096 and partitions 2,8,32")
    parser.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS),
                        help="comma separated subset of: " + ", ".join(CONTENDERS))
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--workdir", default="/tmp/hybrid_infer_bench")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per contender")
    args = parser.parse_args(argv)
    if args.full:
        args.sweep_sizes, args.sweep_partitions = "256,1024,4096", "2,8,32"
    cuda = args.device == "cuda"
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.channels_last = cuda if args.channels_last is None else args.channels_last
    if args.optimize == "freeze" and args.precision != "fp32":
        args.optimize = "compile"  # TorchScript freeze runs fp32 only
    unknown = set(args.contenders.split(",")) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}: choose from {list(CONTENDERS)}")
    return args


def check_device(device: str) -> None:
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: this machine has no CUDA GPU visible to torch "
                         f"(torch {torch.__version__}, cuda build {torch.version.cuda}); "
                         "run on a GPU machine or use --device cpu")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def job_plan(args, runner: str) -> list[dict]:
    """The jobs a contender runs, in order (see the module docstring for warm-up)."""
    rows_per_partition = max(1, args.images // args.partitions)
    main = {"label": "main", "rows": args.images, "partitions": args.partitions, "keep": True}
    small = {"label": "small", "rows": args.small_rows, "partitions": min(2, args.partitions),
             "repeat": args.small_jobs}
    if runner in POOL_RUNNERS:
        jobs = [{**main, "repeat": 2}, small]  # cold, warm; no warm-up
    else:
        jobs = [{**small, "warmup": 1}, main]
    for rows in _ints(args.sweep_sizes):
        if rows != args.images:
            jobs.append({"label": f"size-{rows}", "rows": rows,
                         "partitions": max(1, round(rows / rows_per_partition))})
    for partitions in _ints(args.sweep_partitions):
        if partitions != args.partitions:
            jobs.append({"label": f"parts-{partitions}", "rows": args.images,
                         "partitions": partitions})
    return jobs


def dataset(args) -> tuple[str, int]:
    from hybrid_infer.demo_data import generate_jpegs

    count = max([args.images, args.small_rows] + _ints(args.sweep_sizes))
    directory = os.path.join(args.workdir, f"images-{count}-seed0")
    if len([n for n in os.listdir(directory) if n.endswith(".jpg")]
           if os.path.isdir(directory) else []) != count:
        started = time.time()
        generate_jpegs(directory, count, seed=0)
        print(f"generated {count} JPEGs in {directory} ({time.time() - started:.0f} s)",
              flush=True)
    return directory, count


def run_contender(name: str, args, image_dir: str, run_dir: str) -> dict:
    runner, optimized = CONTENDERS[name]
    work_dir = os.path.join(run_dir, name)
    os.makedirs(work_dir, exist_ok=True)
    config = {
        "name": name, "runner": runner, "image_dir": image_dir, "work_dir": work_dir,
        "stamp_dir": os.path.join(work_dir, "stamps"), "model": args.model, "seed": 0,
        "batch_size": args.batch_size, "threads": args.threads, "device": args.device,
        "precision": args.precision, "channels_last": args.channels_last,
        "optimize": args.optimize if (optimized or runner == "ceiling") else "none",
        "spark_slots": args.spark_slots, "rows": args.images, "decode_threads": 2,
        "actors": args.actors, "streams": args.streams,
        # Ray Data needs CPUs for RayDP's executor, its decode tasks and its actors; the
        # hybrid pool one per actor (what the embedded runtime gives it: one per core)
        "ray_cpus": (max(4, args.spark_slots + 2) if runner in ("ray_data", "raydp")
                     else max(os.cpu_count(), args.actors)),
        "object_store_bytes": 1 << 30,
        "jobs": [] if runner == "ceiling" else job_plan(args, runner),
    }
    config_path = os.path.join(work_dir, "config.json")
    with open(config_path, "w") as handle:
        json.dump(config, handle, indent=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        # start a fresh local Ray: never join a cluster another process left on this host
        "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0"}
    print(f"== {name} ==", flush=True)
    started = time.time()
    load_before = os.getloadavg()[0]
    log_path = os.path.join(work_dir, "log.txt")
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, os.path.join(HERE, "contenders.py"),
                                    config_path], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        with PeakMemory(process.pid) as memory:
            for line in process.stdout:
                log.write(line)
                if re.match(r"\[[a-z]", line):  # the contender's own lines
                    print("  " + line.rstrip(), flush=True)
                if time.time() - started > args.timeout:
                    process.kill()
            code = process.wait()
    result_path = os.path.join(work_dir, "result.json")
    if code != 0 or not os.path.exists(result_path):
        tail = open(log_path).read()[-3000:]
        print(f"  {name} FAILED (exit {code}); log: {log_path}\n{tail}", flush=True)
        return {"failed": True, "exit_code": code, "log": log_path, "log_tail": tail[-1500:]}
    with open(result_path) as handle:
        result = json.load(handle)
    result["memory"] = memory.as_dict()
    # the machine may be shared: the 1-minute load average before and after, as context
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"  done in {time.time() - started:.0f} s, peak PSS "
          f"{result['memory']['peak_pss_mib']:.0f} MiB", flush=True)
    return result


def merge_ceilings(results: dict) -> None:
    """Keep the better of the two ceiling runs (first and last) as the ceiling."""
    end = results.pop("ceiling_end", None)
    first = results.get("ceiling")
    if not end or end.get("failed") or not first or first.get("failed"):
        return
    first["runs"] = {"first": json.loads(json.dumps(first)), "last": end}
    for key, value in end.items():
        if key.startswith("decode_images_per_s"):
            first[key] = max(first[key], value)
    for variant, figures in end["model"].items():
        if figures["images_per_s"] > first["model"][variant]["images_per_s"]:
            first["model"][variant] = figures


def equality(results: dict, run_dir: str, args) -> dict:
    reference = report.load_logits(os.path.join(run_dir, "ceiling"))
    checks = {}
    if reference is None:
        return {"_": {"equal": False, "reason": "no ceiling reference logits"}}
    for name in results:
        if name == "ceiling" or results[name].get("failed"):
            continue
        candidate = report.load_logits(os.path.join(run_dir, name))
        if candidate is None:
            checks[name] = {"equal": False, "reason": "no logits written"}
            continue
        # the udf recipe always computes in fp32; every other mode in args.precision
        precision = "fp32" if name == "udf" and args.device == "cpu" else args.precision
        checks[name] = report.check_equal(reference, candidate, precision)
    optimized = report.load_logits(os.path.join(run_dir, "ceiling"),
                                   f"logits_{args.optimize}.npz")
    if optimized is not None:
        order = sorted(range(len(optimized[0])), key=lambda i: optimized[0][i])
        optimized = ([optimized[0][i] for i in order], optimized[1][order])
        checks["ceiling_optimized"] = report.check_equal(reference, optimized, args.precision)
    return checks


def machine() -> dict:
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib":
            round(psutil.virtual_memory().total / (1 << 30), 1), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version()}


def _ceilings(results: dict) -> dict:
    return {k: v["images_per_s"] for k, v in results.get("ceiling", {}).get("model", {}).items()}


def render(path: str) -> int:
    """Rebuild the table and chart of an earlier run from its JSON (same figures)."""
    with open(path) as handle:
        summary = json.load(handle)
    results = {k: v for k, v in summary["results"].items() if not v.get("failed")}
    if any(not check["equal"] for check in summary["equality"].values()):
        raise SystemExit(f"{path}: results differed across modes; nothing to render")
    rows = report.mode_rows(results, summary["config"])
    table = report.markdown_table(rows, results.get("ceiling", {}), summary["config"])
    base = path[:-len(".json")]
    report.chart(rows, report.sweep_curves(results, summary["config"]), base + ".png",
                 os.path.basename(base), _ceilings(results))
    with open(base + ".md", "w") as handle:
        handle.write(f"{os.path.basename(base)}\n\nCommand: `{summary['command']}`\n\n"
                     f"{table}\n")
    print(table)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--render"]:
        return render(argv[1])
    args = parse_args(argv)
    check_device(args.device)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(args.workdir, f"run-{stamp}")
    image_dir, count = dataset(args)
    started = time.time()
    results = {}
    names = args.contenders.split(",")
    for name in names + (["ceiling_end"] if "ceiling" in names and len(names) > 1 else []):
        results[name] = run_contender(name, args, image_dir, run_dir)
    merge_ceilings(results)
    checks = equality(results, run_dir, args)
    config = {k: v for k, v in vars(args).items()}
    summary = {"command": "python benchmarks/run.py " + shlex.join(argv),
               "config": config, "machine": machine(), "total_s": round(time.time() - started),
               "dataset": {"directory": image_dir, "images": count},
               "equality": checks, "results": results}
    not_equal = {k: v for k, v in checks.items() if not v["equal"]}
    measured = {k: v for k, v in results.items() if not v.get("failed")}
    if not_equal:
        summary["error"] = "results differ across modes; no figure printed"
        print("RESULTS DIFFER, no figures printed:", json.dumps(not_equal, indent=2))
    else:
        print("equality: every mode returned the same rows and logits "
              + "; ".join(f"{k}: {v['reason']}" for k, v in checks.items()))
        summary["rows"] = report.mode_rows(measured, config)
        summary["curves"] = report.sweep_curves(measured, config)
        table = report.markdown_table(summary["rows"], measured.get("ceiling", {}), config)
        summary["table"] = table
        print(table)
    base = os.path.join(args.out, f"bench-{args.model}-{args.device}-{stamp}")
    with open(base + ".json", "w") as handle:
        json.dump(summary, handle, indent=2, default=str)
    if not not_equal:
        title = (f"{args.model}, {args.images} JPEGs, {args.partitions} partitions, "
                 f"{args.device} {args.precision}, {summary['machine']['cores']} cores, "
                 f"{stamp}")
        report.chart(summary["rows"], summary["curves"], base + ".png", title,
                     _ceilings(measured))
        with open(base + ".md", "w") as handle:
            handle.write(f"{title}\n\nCommand: `{summary['command']}`\n\n{table}\n")
    print(f"wrote {base}.json" + ("" if not_equal else " .md .png"))
    failed = [k for k, v in results.items() if v.get("failed")]
    if failed:
        print(f"contenders that failed: {failed}")
    return 1 if (not_equal or failed) else 0


if __name__ == "__main__":
    sys.exit(main())
