"""The `hybrid-infer` command's options (its commands: cli.py).

The pool's options are generated from the settings dataclasses (dataclass_options.py):
their help, defaults and checks are the settings' own. Values are typed here, so that
a bad one is a usage error (exit 2) before anything starts.
"""

from __future__ import annotations

import argparse
import os

from hybrid_infer.dataclass_options import (add_dataclass_options, non_negative_int,
                                            positive_int, positive_seconds)
from hybrid_infer.pool.settings import DECODES, DEVICES, OPTIMIZATIONS, PARTS, PRECISIONS


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

    parser.add_argument("--max-row-bytes", type=positive_int, default=DEFAULT_MAX_ROW_BYTES,
                        help="a value (file or column value) over this many bytes is not "
                             "read into Python: its row gets a 'value too large' error "
                             "(default: %(default)s, 64 MiB)")


#: The demo's requests are small, so that its 64 images show progress as they go.
DEMO_ROWS_PER_BATCH = 8


#: Pool settings that take one of a fixed set of values.
POOL_CHOICES = {"device": DEVICES, "precision": PRECISIONS, "optimize": OPTIMIZATIONS,
                "decode": DECODES}


def _add_pool_options(parser, **defaults):
    """One option per field of the pool's settings (hybrid_infer.pool.settings), with
    its help and default from there; `defaults` overrides some for one command."""
    group = parser.add_argument_group(
        "pool (PoolSettings: actor, placement and client settings)")
    for part in PARTS.values():
        add_dataclass_options(group, part, choices=POOL_CHOICES, defaults=defaults)
    parser.set_defaults(has_pool_options=True)  # main() builds the settings before starting


def _add_console_options(parser, *, default=argparse.SUPPRESS):
    """--verbose, before the command (default False) or after it (SUPPRESS: a command's
    parser must not overwrite what was given before it)."""
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="show Ray's and Spark's own messages on the console (default: "
                             "they go to a log file, which the summary names)")


def _add_progress_options(parser):
    parser.add_argument("--progress-interval", type=positive_seconds, default=None,
                        help="seconds between progress updates on stderr (default: 2)")


class _OneLineErrors(argparse.ArgumentParser):
    """Usage errors as one line, `hybrid-infer: error: ...` (exit 2), for every command
    and subcommand: the usage is one `--help` away, and scripts read the reason."""

    def error(self, message: str):
        self.exit(2, f"hybrid-infer: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from hybrid_infer import __version__

    parser = _OneLineErrors(
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
    demo.add_argument("--images", type=positive_int, default=64, help="how many demo JPEGs")
    demo.add_argument("--workdir", default="demo_output",
                      help="where the images and predictions go (default: %(default)s)")
    demo.add_argument("--mode", default="hybrid", choices=["hybrid", "udf"])
    _add_output_options(demo)
    _add_progress_options(demo)
    _add_console_options(demo)
    _add_model_options(demo, weights_default="random")  # offline: no model hub to fetch from
    _add_pool_options(demo, rows_per_batch=DEMO_ROWS_PER_BATCH)
    _add_cluster_options(demo)

    run = commands.add_parser("run", help="run a model over an image directory or Parquet",
                              description="Read images (a directory, via binaryFile) or a "
                                          "Parquet binary column, infer, write Parquet.")
    run.add_argument("--input", required=True, help="image directory or Parquet dataset")
    run.add_argument("--output", required=True, help="Parquet output path")
    run.add_argument("--input-col", default="content", help="binary column (Parquet input)")
    run.add_argument("--mode", default="hybrid", choices=["hybrid", "udf"])
    run.add_argument("--top-k", type=non_negative_int, default=0, help="also write the top-k classes")
    run.add_argument("--no-progress", action="store_true", help="do not print progress")
    run.add_argument("--fail-fast", action="store_true",
                     help="stop at the first row that cannot be decoded or inferred "
                          "(default: write it with its reason in the `error` column)")
    run.add_argument("--max-pixels", type=positive_int, default=None,
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
    stream.add_argument("--top-k", type=non_negative_int, default=0, help="also write the top-k classes")
    stream.add_argument("--mode", default="hybrid", choices=["hybrid", "udf"])
    stream.add_argument("--trigger-seconds", type=positive_seconds, default=None,
                        help="start a micro-batch every N seconds (default: when files arrive)")
    stream.add_argument("--max-files-per-trigger", type=positive_int, default=None,
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
    scale.add_argument("--num-actors", type=non_negative_int, required=True)
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
