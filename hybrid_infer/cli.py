"""The `hybrid-infer` command's commands: demo | run | stream | pool start|status|stop|scale
| bench (their options: cli_options.py).

Exit codes: 0 success; 1 runtime error (a cluster, model, pool or write failed);
2 usage error (bad options, or an --output that would destroy data); 3 the job ran
and wrote its output, but some rows failed (their reasons are in the `error` column).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hybrid_infer.cli_options import build_parser
from hybrid_infer.dataclass_options import dataclass_values, with_option_names
from hybrid_infer.errors import HybridInferError
from hybrid_infer.pool.settings import PARTS

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_ROWS_FAILED = 0, 1, 2, 3


def _pool_settings(args):
    """The PoolSettings the command line gives; a value its checks refuse is a usage
    error that names the option."""
    from hybrid_infer.errors import ConfigurationError
    from hybrid_infer.pool.settings import PoolSettings

    try:
        return PoolSettings(**{name: part(**dataclass_values(args, part))
                               for name, part in PARTS.items()})
    except ConfigurationError as exc:
        raise UsageError(with_option_names(str(exc), *PARTS.values())) from exc


def _model_spec(args):
    from hybrid_infer.models import model_spec

    return model_spec(args.model, weights=args.weights, seed=args.seed,
                      allow_pickle=args.allow_pickle)


class UsageError(HybridInferError):
    """The command line asks for something that cannot or must not run (exit code 2)."""


def _before_start(check, *args, **kwargs):
    """Run a check of the command line before anything starts: its failure is a usage error."""
    try:
        return check(*args, **kwargs)
    except UsageError:
        raise
    except HybridInferError as exc:
        raise UsageError(str(exc)) from exc


def _say(text: str) -> None:
    """Messages beside the result go to stderr, so stdout holds only the result."""
    print(text, file=sys.stderr, flush=True)


def _library_logs(args):
    """The log file of Ray's and Spark's messages for this command, made on first use;
    None with --verbose (they stay on the console)."""
    if getattr(args, "verbose", False):
        return None
    if getattr(args, "library_logs", None) is None:
        from hybrid_infer.library_logs import LibraryLogs

        args.library_logs = LibraryLogs()
    return args.library_logs


def _start_runtime(args):
    """The embedded or named Spark and Ray; their own messages in the command's log
    file unless --verbose. Spark's log level is its own (WARN), in the file or not."""
    from hybrid_infer.runtime import start_runtime

    logs = _library_logs(args)
    if logs is not None:
        logs.route_ray()
    return start_runtime(args.spark_master, args.ray_address,
                         spark_conf=logs.spark_conf() if logs else None, spark_log_level=None,
                        spark_remote=getattr(args, "remote", None))


def show_warnings_plainly() -> None:
    """Print Python warnings (random weights, ...) as one plain line each, like the
    command's errors, instead of Python's `file:line: Category: text` form."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        _say(f"hybrid-infer: warning: {' '.join(str(message).split())}")

    warnings.showwarning = show


def _report(summary, args) -> int:
    logs = _library_logs(args)
    summary.log = logs.path if logs is not None and not logs.is_empty() else None
    print(json.dumps(summary.to_dict()) if args.json else summary.render(), flush=True)
    return EXIT_ROWS_FAILED if summary.failed else EXIT_OK


def cmd_demo(args) -> int:
    from hybrid_infer.api import JobOptions
    from hybrid_infer.demo_data import generate_jpegs
    from hybrid_infer.job import run_job
    from hybrid_infer.output_path import check_output

    image_dir = os.path.join(args.workdir, "images")
    output = os.path.join(args.workdir, "predictions.parquet")
    spec = _before_start(_model_spec, args)
    _before_start(check_output, image_dir, output, overwrite=args.overwrite)
    generate_jpegs(image_dir, args.images)
    _say(f"generated {args.images} JPEGs in {image_dir}")
    if args.weights == "random":
        _say(f"the demo runs {args.model} with random weights (seed {args.seed}), so that it "
             "works offline: its predictions are noise (--weights DEFAULT for pretrained)")
    with _start_runtime(args) as runtime:
        summary = run_job(runtime.spark, input_path=image_dir, output_path=output,
                          model=spec, model_name=args.model, mode=args.mode,
                          job=JobOptions(top_k=5), pool=args.pool_settings,
                          ray_address=runtime.ray_address, overwrite=args.overwrite,
                          progress_interval_s=args.progress_interval)
    return _report(summary, args)


def _check_input_exists(args) -> None:
    from hybrid_infer.errors import InputError

    if "://" not in args.input and not os.path.exists(args.input):
        raise InputError(f"input path {args.input!r} does not exist: pass a directory "
                         "of images or a Parquet dataset (--input)")


def _check_output(args) -> None:
    from hybrid_infer.output_path import check_output

    check_output(args.input, args.output, overwrite=args.overwrite)


def cmd_run(args) -> int:
    import dataclasses

    from hybrid_infer.api import JobOptions, default_preprocess
    from hybrid_infer.job import run_job

    # fail on a bad input, model or output before starting anything (the input first:
    # resolving a model may fetch pretrained weights)
    _before_start(_check_input_exists, args)
    spec = _before_start(_model_spec, args)
    _before_start(_check_output, args)
    preprocess = (dataclasses.replace(default_preprocess(spec), max_pixels=args.max_pixels)
                  if args.max_pixels else None)
    job = _before_start(JobOptions, input_col=args.input_col, top_k=args.top_k,
                        fail_fast=args.fail_fast, preprocess=preprocess,
                        max_row_bytes=args.max_row_bytes)
    with _start_runtime(args) as runtime:
        summary = run_job(runtime.spark, input_path=args.input, output_path=args.output,
                          model=spec, model_name=args.model, mode=args.mode, job=job,
                          pool=args.pool_settings, ray_address=runtime.ray_address,
                          progress=not args.no_progress,
                          progress_interval_s=args.progress_interval,
                          overwrite=args.overwrite)
    return _report(summary, args)


#: The columns of `pool status` as a table: (heading, value from a pool's status).
_POOL_COLUMNS = [
    ("NAME", lambda s: s["name"]),
    ("MODEL", lambda s: s["model"]),
    ("DEVICE", lambda s: ",".join(sorted({str(a.get("device")) for a in s["actors"]})) or "-"),
    ("ACTORS", lambda s: len(s["actors"])),
    ("LEASES", lambda s: s.get("leases", 0)),  # running jobs: no idle scale-down meanwhile
    ("ROWS", lambda s: s["rows"]),
    ("BATCHES", lambda s: s["batches"]),
    ("LOADS", lambda s: s["model_loads"]),
    ("REPLACED", lambda s: s.get("replaced_actors", 0)),
    ("UPTIME_S", lambda s: s.get("uptime_s", "")),
]


def pool_table(statuses: list[dict]) -> str:
    """A readable table of pools, one row each (`pool status` without --json)."""
    if not statuses:
        return "no pools running"
    rows = [[head for head, _ in _POOL_COLUMNS]]
    rows += [[str(value(s)) for _, value in _POOL_COLUMNS] for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def cmd_stream(args) -> int:
    import signal

    from hybrid_infer.stream import describe_progress, start_stream

    from hybrid_infer.output_path import check_not_input, is_local

    spec = _before_start(_model_spec, args)
    for path in (args.output, args.checkpoint):  # appended to, so only never over the input
        if is_local(args.input) and is_local(path):
            _before_start(check_not_input, args.input, path)
    with _start_runtime(args) as runtime:
        query = start_stream(runtime.spark, input_path=args.input, output_path=args.output,
                             checkpoint=args.checkpoint, trigger_seconds=args.trigger_seconds,
                             available_now=args.available_now,
                             max_files_per_trigger=args.max_files_per_trigger,
                             model=spec, mode=args.mode, pool=args.pool_settings,
                             ray_address=runtime.ray_address, top_k=args.top_k,
                             max_row_bytes=args.max_row_bytes)
        print(f"streaming {args.input} -> {args.output} (checkpoint {args.checkpoint}); "
              "Ctrl-C stops", flush=True)
        stop_requested = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop_requested.append(True))
        printed = -1
        while query.isActive and not stop_requested:
            query.awaitTermination(2)
            for progress in query.recentProgress:
                if progress.get("batchId", -1) > printed and progress.get("numInputRows"):
                    print(describe_progress(progress), flush=True)
                    printed = progress["batchId"]
        if query.isActive:
            query.stop()
        if query.exception() is not None:
            raise HybridInferError(f"the stream failed: {query.exception().desc}")
    print(f"stream stopped; output {args.output}")
    return 0


def cmd_pool(args) -> int:
    from hybrid_infer.errors import ConfigurationError
    from hybrid_infer.pool.registry import Pool
    from hybrid_infer.pool.settings import check_actor_count
    from hybrid_infer.runtime import connect_ray

    if args.pool_command == "scale":
        _before_start(check_actor_count, args.num_actors)
    spec = _before_start(_model_spec, args) if args.pool_command == "start" else None
    logs = _library_logs(args)
    if logs is not None:
        logs.route_ray()
    connect_ray(args.ray_address)
    if args.pool_command == "start":
        pool = Pool.get_or_create(spec, args.pool_settings)
        pool.heal()  # one found scaled down (idle, or `pool scale 0`) is warmed up again
        statuses = [pool.status()]
        print(json.dumps(statuses[0], default=str) if args.json else pool_table(statuses))
    elif args.pool_command == "status":
        names = [args.name] if args.name else Pool.names()
        statuses = [Pool.get(name).status() for name in names]
        print(json.dumps(statuses, default=str) if args.json else pool_table(statuses))
    elif args.pool_command == "stop":
        names = [args.name] if args.name else Pool.names()
        stopped = {name: Pool.get(name).stop() for name in names}
        if args.json:
            print(json.dumps([{"name": n, "stopped_actors": k} for n, k in stopped.items()]))
        else:
            for name, killed in stopped.items():
                print(f"stopped {name}: {killed} actors")
            if not names:
                print("no pools running")
    elif args.pool_command == "scale":
        try:
            actors = len(Pool.get(args.name).scale(args.num_actors))
        except ConfigurationError as exc:  # outside the pool's min/max: the asker's to fix
            raise UsageError(str(exc)) from exc
        print(json.dumps({"name": args.name, "actors": actors}) if args.json
              else f"{args.name}: {actors} actors")
    return EXIT_OK


def cmd_bench(args) -> int:
    from hybrid_infer.bench.harness import main as bench_main

    return bench_main(args.bench_args)



def _absolute_paths_for_connect(args) -> None:
    """With a Spark Connect server (--remote, $SPARK_REMOTE), local paths are made
    absolute: the server resolves a relative path against its own working folder."""
    from hybrid_infer.runtime import spark_remote

    if getattr(args, "spark_master", None) or not spark_remote(getattr(args, "remote", None)):
        return
    for name in ("input", "output", "checkpoint", "workdir"):
        value = getattr(args, name, None)
        if isinstance(value, str) and "://" not in value and not value.startswith("file:"):
            setattr(args, name, os.path.abspath(value))

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # argparse's REMAINDER drops leading --options: pass all on
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    from hybrid_infer.logs import log_to_stderr

    log_to_stderr(args.log_level)
    show_warnings_plainly()
    _absolute_paths_for_connect(args)
    handler = {"demo": cmd_demo, "run": cmd_run, "stream": cmd_stream, "pool": cmd_pool,
               "bench": cmd_bench}
    try:
        # every value the pool's settings check, checked before anything starts
        args.pool_settings = (_before_start(_pool_settings, args)
                              if getattr(args, "has_pool_options", False) else None)
        return handler[args.command](args)
    except HybridInferError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the cause's layout
        logs = getattr(args, "library_logs", None)
        if logs is not None and not logs.is_empty():
            message += f" (Ray's and Spark's messages: {logs.path})"
        print(f"hybrid-infer: error: {message}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
    finally:
        _keep_or_remove_log(args)


def _keep_or_remove_log(args) -> None:
    """An empty log file is removed; a command without a summary to name a kept one
    (stream, pool) says where it is."""
    logs = getattr(args, "library_logs", None)
    if logs is None:
        return
    if logs.is_empty():
        logs.remove()
    elif args.command not in ("run", "demo"):
        _say(f"Ray's and Spark's messages: {logs.path}")


if __name__ == "__main__":
    sys.exit(main())
