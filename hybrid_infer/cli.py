"""The `hybrid-infer` command: demo | run | stream | pool start|status|stop|scale | bench.

Exit codes: 0 success; 1 runtime error (a cluster, model, pool or write failed);
2 usage error (bad options, or an --output that would destroy data); 3 the job ran
and wrote its output, but some rows failed (their reasons are in the `error` column).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hybrid_infer.errors import HybridInferError
from hybrid_infer.pool.settings import ClientSettings, PlacementSettings

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_ROWS_FAILED = 0, 1, 2, 3


def _env_ray_address(fallback=None):
    """RAY_ADDRESS, as `ray job submit` sets it for the job's entrypoint, else `fallback`.

    An http(s):// value is a dashboard address (what a shell exports for `ray job
    submit` itself), not a cluster to join: it is left to Ray's job CLI.
    """
    address = os.environ.get("RAY_ADDRESS", "")
    return address if address and not address.startswith(("http://", "https://")) else fallback


def _add_cluster_options(parser):
    group = parser.add_argument_group("clusters (default: embedded local Spark and Ray)")
    group.add_argument("--spark-master", default=None,
                       help="Spark master URL, e.g. spark://host:7077 (default: local[*])")
    group.add_argument("--remote", default=None, metavar="sc://HOST:PORT",
                       help="a Spark Connect server instead of a Spark master (default: "
                            "$SPARK_REMOTE if set, as PySpark reads it); this process still "
                            "joins Ray, and the server's executors must reach the pool")
    group.add_argument("--ray-address", default=_env_ray_address(),
                       help="Ray cluster: host:port, 'auto' or ray://host:10001 (default: "
                            "$RAY_ADDRESS if set, else a local Ray on 127.0.0.1). With token "
                            "authentication, set RAY_AUTH_TOKEN or ~/.ray/auth_token")


def _add_output_options(parser):
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output even if the engine did not write "
                             "it (default: only the engine's own earlier output is replaced)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object on stdout (progress and "
                             "messages go to stderr)")


def _add_model_options(parser, *, weights_default=None):
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="resnet18",
                       help="torchvision name, package.module:factory, TorchScript .pt, "
                       "torch.export .pt2 or MLflow URI (models:/name/version)")
    group.add_argument("--weights", default=weights_default,
                       help="a torchvision weight name (DEFAULT, IMAGENET1K_V2, "
                            "ResNet50_Weights.IMAGENET1K_V2: fetched once into $TORCH_HOME), "
                            "a local state_dict file (.pt/.pth/.safetensors) or 'random' "
                            "(seeded, untrained) (default: %(default)s; none: a torchvision "
                            "name's DEFAULT pretrained weights)")
    group.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    group.add_argument("--allow-pickle", action="store_true",
                       help="load pickled checkpoints (trusted files only: runs their code)")


def _add_row_limit_option(parser):
    from hybrid_infer.row_limits import DEFAULT_MAX_ROW_BYTES

    parser.add_argument("--max-row-bytes", type=_positive_int, default=DEFAULT_MAX_ROW_BYTES,
                        help="a value (file or column value) over this many bytes is not "
                             "read into Python: its row gets a 'value too large' error "
                             "(default: %(default)s, 64 MiB)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


_PLACEMENT = PlacementSettings()  # the CLI's defaults are the settings' own
_CLIENT = ClientSettings()
#: The demo's requests are small, so that its 64 images show progress as they go.
DEMO_ROWS_PER_BATCH = 8


def _add_pool_options(parser, *, rows_per_batch_default=_CLIENT.rows_per_batch):
    group = parser.add_argument_group("pool")
    group.add_argument("--batch-size", type=int, default=None,
                       help="rows each actor computes at once, shared by its streams "
                            "(default: 32 on CPU, 256 on a GPU)")
    group.add_argument("--torch-threads", type=int, default=None,
                       help="torch threads per actor (default: the CPUs each actor gets "
                            "from Ray, --num-cpus-per-actor rounded up)")
    group.add_argument("--streams", type=int, default=None,
                       help="model threads per actor, each on torch-threads/streams "
                            "threads (default: one per torch thread on CPU, one on GPU)")
    group.add_argument("--num-actors", type=int, default=None,
                       help="actors in the pool, and what it scales back up to when work "
                            "arrives (default: one per GPU, else one)")
    group.add_argument("--min-actors", type=int, default=_PLACEMENT.min_actors,
                       help="actors an idle pool keeps (default: %(default)s: an idle pool "
                            "frees every actor and scales up again for the next job)")
    group.add_argument("--max-actors", type=int, default=None,
                       help="the most actors the pool may have (default: no bound)")
    group.add_argument("--num-cpus-per-actor", type=float,
                       default=_PLACEMENT.num_cpus_per_actor,
                       help="CPUs Ray reserves for each actor (default: %(default)s)")
    group.add_argument("--num-gpus-per-actor", type=float, default=None,
                       help="GPUs Ray reserves for each actor, may be fractional (default: "
                            "1 with --device cuda, even before a GPU node exists; with "
                            "auto, 1 if the cluster has GPUs at pool start, else 0)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="cuda: every actor asks Ray for a GPU (an autoscaler can add "
                            "GPU nodes); auto: a GPU when the cluster has some at pool "
                            "start, else CPU (default: %(default)s)")
    group.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                       help="autocast dtype (default: fp32 on CPU, bf16 on a GPU)")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels_last memory format (default: on a GPU only)")
    group.add_argument("--decode", default="auto", choices=["auto", "gpu", "cpu"],
                       help="where images are decoded: gpu (nvJPEG, batched), cpu (PIL), "
                            "auto: the GPU when the actor has one (default)")
    group.add_argument("--optimize", default="none", choices=["none", "freeze", "compile"],
                       help="one-time model optimisation paid at pool start (default: none)")
    group.add_argument("--idle-timeout", type=float, default=_PLACEMENT.idle_timeout_s,
                       help="seconds without work and without a running job before the "
                            "pool scales down to --min-actors (0: never; "
                            "default: %(default)s)")
    group.add_argument("--build-timeout", type=float, default=_PLACEMENT.build_timeout_s,
                       help="seconds building the weights may take at pool start")
    group.add_argument("--place-timeout", type=float, default=_PLACEMENT.place_timeout_s,
                       help="seconds new actors may take to be placed and load the model "
                            "(raise it when an autoscaler must first add nodes; default: "
                            "%(default)s)")
    group.add_argument("--rows-per-batch", type=int, default=rows_per_batch_default,
                       help="rows a Spark task sends the pool per request; the progress "
                            "line counts answered requests (default: %(default)s)")


def _add_console_options(parser, *, default=argparse.SUPPRESS):
    """--verbose, before the command (default False) or after it (SUPPRESS: a command's
    parser must not overwrite what was given before it)."""
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="show Ray's and Spark's own messages on the console (default: "
                             "they go to a log file, which the summary names)")


def _positive_seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _add_progress_options(parser):
    parser.add_argument("--progress-interval", type=_positive_seconds, default=None,
                        help="seconds between progress updates on stderr (default: 2)")


def _pool_settings(args):
    from hybrid_infer.pool.settings import PoolSettings

    return PoolSettings(num_actors=args.num_actors, min_actors=args.min_actors,
                        max_actors=args.max_actors, batch_size=args.batch_size,
                        device=args.device, precision=args.precision,
                        channels_last=args.channels_last, optimize=args.optimize,
                        torch_threads=args.torch_threads, streams=args.streams,
                        num_cpus_per_actor=args.num_cpus_per_actor,
                        num_gpus_per_actor=args.num_gpus_per_actor,
                        idle_timeout_s=args.idle_timeout, build_timeout_s=args.build_timeout,
                        place_timeout_s=args.place_timeout, decode=args.decode,
                        rows_per_batch=args.rows_per_batch)


def _model_spec(args):
    from hybrid_infer.models import model_spec

    return model_spec(args.model, weights=args.weights, seed=args.seed,
                      allow_pickle=args.allow_pickle)


def build_parser() -> argparse.ArgumentParser:
    from hybrid_infer import __version__

    parser = argparse.ArgumentParser(
        prog="hybrid-infer",
        description="Deep-learning batch inference over Spark DataFrames on a warm Ray actor pool.",
        epilog="exit codes: 0 success, 1 runtime error, 2 usage error, 3 some rows failed "
               "(the output was written; see its `error` column)")
    parser.add_argument("--version", action="version", version=f"hybrid-infer {__version__}")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"],
                        help="the engine's log records on stderr: pool starts, heals, "
                             "warnings (default: %(default)s)")
    _add_console_options(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate images and run the default job end to end",
                               description="Generate demo JPEGs, run a real model over them on "
                                           "the embedded Spark + Ray, and write Parquet.")
    demo.add_argument("--images", type=int, default=64, help="how many demo JPEGs")
    demo.add_argument("--workdir", default="demo_output",
                      help="where the images and predictions go (default: %(default)s)")
    demo.add_argument("--mode", default="hybrid", choices=["hybrid", "udf"])
    _add_output_options(demo)
    _add_progress_options(demo)
    _add_console_options(demo)
    _add_model_options(demo, weights_default="random")  # offline: no model hub to fetch from
    _add_pool_options(demo, rows_per_batch_default=DEMO_ROWS_PER_BATCH)
    _add_cluster_options(demo)

    run = commands.add_parser("run", help="run a model over an image directory or Parquet",
                              description="Read images (a directory, via binaryFile) or a "
                                          "Parquet binary column, infer, write Parquet.")
    run.add_argument("--input", required=True, help="image directory or Parquet dataset")
    run.add_argument("--output", required=True, help="Parquet output path")
    run.add_argument("--input-col", default="content", help="binary column (Parquet input)")
    run.add_argument("--mode", default="hybrid", choices=["hybrid", "udf"])
    run.add_argument("--top-k", type=int, default=0, help="also write the top-k classes")
    run.add_argument("--no-progress", action="store_true", help="do not print progress")
    run.add_argument("--fail-fast", action="store_true",
                     help="stop at the first row that cannot be decoded or inferred "
                          "(default: write it with its reason in the `error` column)")
    run.add_argument("--max-pixels", type=int, default=None,
                     help="refuse images with more pixels than this before decoding "
                          "(default: 64,000,000)")
    _add_row_limit_option(run)
    _add_output_options(run)
    _add_progress_options(run)
    _add_console_options(run)
    _add_model_options(run)
    _add_pool_options(run)
    _add_cluster_options(run)

    stream = commands.add_parser(
        "stream", help="infer on image files as they arrive in a folder (Structured Streaming)",
        description="Watch --input for new image files and append their predictions to the "
                    "Parquet dataset --output, exactly once across restarts from --checkpoint. "
                    "Runs until interrupted (Ctrl-C or SIGTERM stop it cleanly), or with "
                    "--available-now until the files present at start are done.")
    stream.add_argument("--input", required=True, help="folder that new image files arrive in")
    stream.add_argument("--output", required=True, help="Parquet output folder (appended to)")
    stream.add_argument("--checkpoint", required=True,
                        help="checkpoint folder: keep it to resume exactly where a stopped "
                             "or crashed stream left off")
    stream.add_argument("--top-k", type=int, default=0, help="also write the top-k classes")
    stream.add_argument("--mode", default="hybrid", choices=["hybrid", "udf"])
    stream.add_argument("--trigger-seconds", type=float, default=None,
                        help="start a micro-batch every N seconds (default: when files arrive)")
    stream.add_argument("--max-files-per-trigger", type=int, default=None,
                        help="at most N new files per micro-batch")
    stream.add_argument("--available-now", action="store_true",
                        help="process the files present now, then exit")
    _add_console_options(stream)
    _add_row_limit_option(stream)
    _add_model_options(stream)
    _add_pool_options(stream)
    _add_cluster_options(stream)

    pool = commands.add_parser("pool", help="manage warm pools on a running Ray cluster",
                               description="Start, inspect, scale and stop named warm pools.")
    pool_commands = pool.add_subparsers(dest="pool_command", required=True)
    start = pool_commands.add_parser("start", help="start (or find) the pool for a model")
    _add_model_options(start)
    _add_pool_options(start)
    status = pool_commands.add_parser("status", help="show every pool, or one")
    status.add_argument("--name", help="one pool's name (default: all)")
    stop = pool_commands.add_parser("stop", help="stop a pool (or all) and its actors")
    stop.add_argument("--name", help="the pool's name (default: every pool)")
    scale = pool_commands.add_parser(
        "scale", help="change a pool's number of actors (0: free them until a job arrives)")
    scale.add_argument("--name", required=True)
    scale.add_argument("--num-actors", type=int, required=True)
    for sub in (start, status, stop, scale):
        sub.add_argument("--ray-address", default=_env_ray_address("auto"),
                         help="the Ray cluster holding the pools (default: $RAY_ADDRESS if "
                              "set, else 'auto': the cluster started on this machine)")
        sub.add_argument("--json", action="store_true",
                         help="print JSON instead of a table")
        _add_console_options(sub)

    bench = commands.add_parser("bench", help="benchmark the modes side by side",
                                description="Run the benchmark, hybrid_infer.bench "
                                            "(see its --help).",
                                add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


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
                         spark_remote=args.remote)


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
                          pool=_pool_settings(args), ray_address=runtime.ray_address,
                          top_k=5, overwrite=args.overwrite,
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

    from hybrid_infer.api import default_preprocess
    from hybrid_infer.job import run_job

    # fail on a bad input, model or output before starting anything (the input first:
    # resolving a model may fetch pretrained weights)
    _before_start(_check_input_exists, args)
    spec = _before_start(_model_spec, args)
    _before_start(_check_output, args)
    preprocess = (dataclasses.replace(default_preprocess(spec), max_pixels=args.max_pixels)
                  if args.max_pixels else None)
    with _start_runtime(args) as runtime:
        summary = run_job(runtime.spark, input_path=args.input, output_path=args.output,
                          input_col=args.input_col, model=spec, model_name=args.model,
                          mode=args.mode,
                          pool=_pool_settings(args), ray_address=runtime.ray_address,
                          top_k=args.top_k, progress=not args.no_progress,
                          progress_interval_s=args.progress_interval,
                          fail_fast=args.fail_fast, preprocess=preprocess,
                          max_row_bytes=args.max_row_bytes,
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
                             model=spec, mode=args.mode, pool=_pool_settings(args),
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
    logs = _library_logs(args)
    if logs is not None:
        logs.route_ray()
    connect_ray(args.ray_address)
    if args.pool_command == "start":
        pool = Pool.get_or_create(_model_spec(args), _pool_settings(args))
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
