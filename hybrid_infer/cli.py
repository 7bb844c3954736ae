"""The `hybrid-infer` command: demo | run | pool start|status|stop|scale | bench."""

from __future__ import annotations

import argparse
import json
import os
import sys

from hybrid_infer.errors import HybridInferError


def _add_cluster_options(parser, *, ray_default=None):
    group = parser.add_argument_group("clusters (default: embedded local Spark and Ray)")
    group.add_argument("--spark-master", default=None,
                       help="Spark master URL, e.g. spark://host:7077 (default: local[*])")
    group.add_argument("--ray-address", default=ray_default,
                       help="Ray cluster: host:port, 'auto' or ray://host:10001 "
                            "(default: %(default)s; none starts a local Ray on 127.0.0.1)")


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


def _add_pool_options(parser):
    group = parser.add_argument_group("pool")
    group.add_argument("--batch-size", type=int, default=32,
                       help="rows each actor computes at once (shared by its streams)")
    group.add_argument("--torch-threads", type=int, default=None,
                       help="torch threads per actor (default: the machine's cores)")
    group.add_argument("--streams", type=int, default=None,
                       help="model threads per actor, each on torch-threads/streams "
                            "threads (default: one per torch thread on CPU, one on GPU)")
    group.add_argument("--num-actors", type=int, default=None,
                       help="actors in the pool (default: one per GPU, else one)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    group.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    group.add_argument("--channels-last", action="store_true")
    group.add_argument("--optimize", default="none", choices=["none", "freeze", "compile"],
                       help="one-time model optimisation paid at pool start (default: none)")
    group.add_argument("--idle-timeout", type=float, default=3600.0,
                       help="seconds without work before the pool stops itself (0: never)")


def _pool_settings(args):
    from hybrid_infer.pool.settings import PoolSettings

    return PoolSettings(num_actors=args.num_actors, batch_size=args.batch_size,
                        device=args.device, precision=args.precision,
                        channels_last=args.channels_last, optimize=args.optimize,
                        torch_threads=args.torch_threads, streams=args.streams,
                        idle_timeout_s=args.idle_timeout)


def _model_spec(args):
    from hybrid_infer.models import model_spec

    return model_spec(args.model, weights=args.weights, seed=args.seed,
                      allow_pickle=args.allow_pickle)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid-infer",
        description="Deep-learning batch inference over Spark DataFrames on a warm Ray actor pool.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate images and run the default job end to end",
                               description="Generate demo JPEGs, run a real model over them on "
                                           "the embedded Spark + Ray, and write Parquet.")
    demo.add_argument("--images", type=int, default=64, help="how many demo JPEGs")
    demo.add_argument("--workdir", default="demo_output",
                      help="where the images and predictions go (default: %(default)s)")
    demo.add_argument("--mode", default="hybrid", choices=["hybrid", "udf"])
    _add_model_options(demo, weights_default="random")  # offline: no model hub to fetch from
    _add_pool_options(demo)
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
    _add_model_options(run)
    _add_pool_options(run)
    _add_cluster_options(run)

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
    scale = pool_commands.add_parser("scale", help="change a pool's number of actors")
    scale.add_argument("--name", required=True)
    scale.add_argument("--num-actors", type=int, required=True)
    for sub in (start, status, stop, scale):
        sub.add_argument("--ray-address", default="auto",
                         help="the Ray cluster holding the pools (default: %(default)s)")

    bench = commands.add_parser("bench", help="benchmark the modes side by side",
                                description="Run benchmarks/run.py (see its --help).",
                                add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


def cmd_demo(args) -> int:
    from hybrid_infer.demo_data import generate_jpegs
    from hybrid_infer.job import run_job
    from hybrid_infer.runtime import start_runtime

    image_dir = os.path.join(args.workdir, "images")
    output = os.path.join(args.workdir, "predictions.parquet")
    spec = _model_spec(args)
    generate_jpegs(image_dir, args.images)
    print(f"generated {args.images} JPEGs in {image_dir}")
    if args.weights == "random":
        print(f"the demo runs {args.model} with random weights (seed {args.seed}), so that it "
              "works offline: its predictions are noise (--weights DEFAULT for pretrained)")
    with start_runtime(args.spark_master, args.ray_address) as runtime:
        summary = run_job(runtime.spark, input_path=image_dir, output_path=output,
                          model=spec, model_name=args.model, mode=args.mode,
                          pool=_pool_settings(args),
                          ray_address=runtime.ray_address, top_k=5)
    print(summary.render())
    return 0


def cmd_run(args) -> int:
    from hybrid_infer.job import run_job
    from hybrid_infer.runtime import start_runtime

    import dataclasses

    from hybrid_infer.api import default_preprocess

    if "://" not in args.input and not os.path.exists(args.input):
        raise HybridInferError(f"input path {args.input!r} does not exist: pass a directory "
                               "of images or a Parquet dataset (--input)")
    spec = _model_spec(args)  # fail on a bad model or input before starting anything
    preprocess = (dataclasses.replace(default_preprocess(spec), max_pixels=args.max_pixels)
                  if args.max_pixels else None)
    with start_runtime(args.spark_master, args.ray_address) as runtime:
        summary = run_job(runtime.spark, input_path=args.input, output_path=args.output,
                          input_col=args.input_col, model=spec, model_name=args.model,
                          mode=args.mode,
                          pool=_pool_settings(args), ray_address=runtime.ray_address,
                          top_k=args.top_k, progress=not args.no_progress,
                          fail_fast=args.fail_fast, preprocess=preprocess)
    print(summary.render())
    return 0


def cmd_pool(args) -> int:
    from hybrid_infer.pool.registry import Pool
    from hybrid_infer.runtime import connect_ray

    connect_ray(args.ray_address)
    if args.pool_command == "start":
        pool = Pool.get_or_create(_model_spec(args), _pool_settings(args))
        print(json.dumps(pool.status(), indent=2, default=str))
    elif args.pool_command == "status":
        names = [args.name] if args.name else Pool.names()
        print(json.dumps([Pool.get(name).status() for name in names], indent=2, default=str))
    elif args.pool_command == "stop":
        names = [args.name] if args.name else Pool.names()
        for name in names:
            print(f"stopped {name}: {Pool.get(name).stop()} actors")
        if not names:
            print("no pools running")
    elif args.pool_command == "scale":
        print(f"{args.name}: {len(Pool.get(args.name).scale(args.num_actors))} actors")
    return 0


def cmd_bench(args) -> int:
    import runpy

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks", "run.py")
    if not os.path.exists(script):
        raise HybridInferError(f"{script} not found: run bench from a source checkout")
    sys.argv = [script] + list(args.bench_args)
    runpy.run_path(script, run_name="__main__")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # argparse's REMAINDER drops leading --options: pass all on
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    handler = {"demo": cmd_demo, "run": cmd_run, "pool": cmd_pool, "bench": cmd_bench}
    try:
        return handler[args.command](args)
    except HybridInferError as exc:
        print(f"hybrid-infer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
