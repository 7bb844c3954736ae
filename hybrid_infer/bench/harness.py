"""Benchmark every mode side by side over the same generated JPEGs, against the ceiling.

    python benchmarks/run.py                      # resnet18, 512 images, CPU (~9 min, 2 cores)
    python benchmarks/run.py --model resnet50 --images 256 --optimize freeze
    python benchmarks/run.py --full               # size sweep to 4096, partitions 2..32
    python benchmarks/run.py --device cuda        # bf16 autocast + channels_last on a GPU
    python benchmarks/run.py --render results/bench-....json   # redraw an earlier run
    hybrid-infer bench ...                        # the same from an install (--out: ./bench_results)

Each contender (hybrid_infer/bench/contenders/) runs in its own process group; this one
generates the images once, starts the contenders one after another, samples the peak
memory of each one's whole process tree, kills a contender's whole process group at
its --timeout (reported as timed out, even if it hangs silently), checks that every
contender returned the same rows with the same logits (before printing any figure),
then writes <out>/bench-<model>-<device>-<stamp>.json, .md and .png.

Warm-up, stated: the ceiling runs one untimed batch first (and runs twice, first and
last, keeping the faster, as the shared machine's load drifts); the Spark and Ray Data
contenders run one untimed 64-image job first (starts Python workers; predict_batch_udf
caches its model there); hybrid's first job is reported as "cold" (pool start and
model load included) and its second as "warm".
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import sys
import time

import hybrid_infer
from hybrid_infer.bench import report
from hybrid_infer.bench.config import (CONTENDERS, POOL_RUNNERS, BenchConfig,
                                       ContenderConfig, parse_args)
from hybrid_infer.bench.memory import PeakMemory
from hybrid_infer.bench.process import run_with_deadline

#: The folder holding the hybrid_infer package: the contenders' processes import it
#: from there (a source checkout or site-packages alike).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(hybrid_infer.__file__)))

def check_device(device: str) -> None:
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: this machine has no CUDA GPU visible to torch "
                         f"(torch {torch.__version__}, cuda build {torch.version.cuda}); "
                         "run on a GPU machine or use --device cpu")


def job_plan(args: BenchConfig, runner: str) -> list[dict]:
    """The jobs a contender runs, in order (see the module docstring for warm-up)."""
    rows_per_partition = max(1, args.images // args.partitions)
    main = {"label": "main", "rows": args.images, "partitions": args.partitions, "keep": True}
    small = {"label": "small", "rows": args.small_rows, "partitions": min(2, args.partitions),
             "repeat": args.small_jobs}
    if runner in POOL_RUNNERS:
        jobs = [{**main, "repeat": 2}, small]  # cold, warm; no warm-up
    else:
        jobs = [{**small, "warmup": 1}, main]
    for rows in args.sizes:
        if rows != args.images:
            jobs.append({"label": f"size-{rows}", "rows": rows,
                         "partitions": max(1, round(rows / rows_per_partition))})
    for partitions in args.partition_counts:
        if partitions != args.partitions:
            jobs.append({"label": f"parts-{partitions}", "rows": args.images,
                         "partitions": partitions})
    return jobs


def dataset(args: BenchConfig) -> tuple[str, int]:
    from hybrid_infer.demo_data import generate_jpegs

    count = max([args.images, args.small_rows] + args.sizes)
    directory = os.path.join(args.workdir, f"images-{count}-seed0")
    if len([n for n in os.listdir(directory) if n.endswith(".jpg")]
           if os.path.isdir(directory) else []) != count:
        started = time.time()
        generate_jpegs(directory, count, seed=0)
        print(f"generated {count} JPEGs in {directory} ({time.time() - started:.0f} s)",
              flush=True)
    return directory, count


def contender_config(name: str, args: BenchConfig, image_dir: str,
                     run_dir: str) -> ContenderConfig:
    contender = CONTENDERS[name]
    runner = contender.runner
    work_dir = os.path.join(run_dir, name)
    precision, channels_last = args.forward(contender)
    return ContenderConfig(
        name=name, runner=runner, image_dir=image_dir, work_dir=work_dir,
        stamp_dir=os.path.join(work_dir, "stamps"), model=args.model, seed=0,
        batch_size=args.batch_size, device=args.device,
        # the ceiling measures the machine: every core unless tuned
        threads=(args.threads or os.cpu_count() or 1) if runner == "ceiling" else args.threads,
        precision=precision, channels_last=channels_last,
        optimize=args.optimize if (contender.optimized or runner == "ceiling") else "none",
        spark_slots=args.spark_slots, rows=args.images, decode_threads=2,
        actors=args.actors, streams=args.streams,
        # Ray Data needs CPUs for RayDP's executor, its decode tasks and its actors; the
        # hybrid pool one per actor (what the embedded runtime gives it: one per core)
        ray_cpus=(max(4, args.spark_slots + 2) if runner in ("ray_data", "raydp")
                  else max(os.cpu_count() or 1, args.actors or 1)),
        object_store_bytes=1 << 30,
        jobs=[] if runner == "ceiling" else job_plan(args, runner))


def contender_env() -> dict:
    """The contender's environment: this one, the package importable, and a fresh
    local Ray (never join a cluster another process left on this host)."""
    paths = [PACKAGE_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                              if p and p != PACKAGE_ROOT]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths),
            "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0"}


def run_contender(name: str, args: BenchConfig, image_dir: str, run_dir: str) -> dict:
    """Run one contender in its own process group; kill the whole group at
    args.timeout. Returns its result, or {"failed": True, ...} saying why."""
    config = contender_config(name, args, image_dir, run_dir)
    os.makedirs(config.work_dir, exist_ok=True)
    config_path = os.path.join(config.work_dir, "config.json")
    config.save(config_path)
    print(f"== {name} ==", flush=True)
    load_before = os.getloadavg()[0]
    log_path = os.path.join(config.work_dir, "log.txt")
    sampler: list[PeakMemory] = []

    def echo(line: str) -> None:
        if re.match(r"\[[a-z]", line):  # the contender's own lines
            print("  " + line.rstrip(), flush=True)

    try:
        finished = run_with_deadline(
            [sys.executable, "-m", "hybrid_infer.bench.worker", config_path],
            env=contender_env(), log_path=log_path, timeout_s=args.timeout, on_line=echo,
            on_start=lambda pid: sampler.append(PeakMemory(pid).__enter__()))
    finally:
        for memory in sampler:
            memory.__exit__(None, None, None)
    result_path = os.path.join(config.work_dir, "result.json")
    if finished.timed_out or finished.exit_code != 0 or not os.path.exists(result_path):
        tail = open(log_path).read()[-3000:]
        why = (f"timed out after {args.timeout:g} s (its process group was killed)"
               if finished.timed_out else f"exit {finished.exit_code}")
        print(f"  {name} FAILED: {why}; log: {log_path}\n{tail}", flush=True)
        return {"failed": True, "timed_out": finished.timed_out, "reason": why,
                "exit_code": finished.exit_code, "seconds": round(finished.seconds, 1),
                "log": log_path, "log_tail": tail[-1500:]}
    with open(result_path) as handle:
        result = json.load(handle)
    result["memory"] = sampler[0].as_dict()
    # the machine may be shared: the 1-minute load average before and after, as context
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"  done in {finished.seconds:.0f} s, peak PSS "
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


def equality(results: dict, run_dir: str, args: BenchConfig) -> dict:
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
        # the reference (the ceiling) computes in args.precision, a recipe perhaps in
        # fp32: the looser of the two sets the tolerance
        precision = args.precision
        if precision == "fp32":
            precision = args.forward(CONTENDERS[name])[0]
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
    import pyarrow
    import pyspark
    import ray
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
            "torch": torch.__version__, "pyspark": pyspark.__version__,
            "ray": ray.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version()}


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


def main(argv=None, *, command: str = "hybrid-infer bench",
         out_default: str = "bench_results") -> int:
    """`command` names how the run was started (recorded in the results);
    `out_default` is where results go without --out."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--render"]:
        return render(argv[1])
    args = parse_args(argv, description=__doc__, out_default=out_default)
    check_device(args.device)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(args.workdir, f"run-{stamp}")
    image_dir, count = dataset(args)
    started = time.time()
    results = {}
    names = args.names
    for name in names + (["ceiling_end"] if "ceiling" in names and len(names) > 1 else []):
        results[name] = run_contender(name, args, image_dir, run_dir)
    merge_ceilings(results)
    checks = equality(results, run_dir, args)
    config = args.as_dict()
    summary = {"command": f"{command} {shlex.join(argv)}".strip(),
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
                 f"Spark {summary['machine']['pyspark']}, "
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
