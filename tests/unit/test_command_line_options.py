"""Every bad value on the command line is a usage error (exit 2) before anything starts.

The options of the pool are generated from the settings dataclasses (dataclass_options.py);
their checks run when the command line is parsed, with the option named in the message.
All cases run in one fresh process (the command's own: `main()` sets up logging and
warnings for its process), each timed; none may have started Spark or Ray.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import time

import pytest

from hybrid_infer.bench.config import CHOICES as BENCH_CHOICES
from hybrid_infer.bench.config import BenchConfig
from hybrid_infer.cli_options import POOL_CHOICES, build_parser
from hybrid_infer.dataclass_options import field_docs, option_name
from hybrid_infer.pool.settings import PARTS

POOL_CASES = {  # option and value -> what the message says
    "--batch-size 0": "--batch-size must be >= 1, got 0",
    "--batch-size eight": "--batch-size: invalid int value: 'eight'",
    "--torch-threads 0": "--torch-threads must be >= 1",
    "--streams 0": "--streams must be >= 1",
    "--decode-threads 0": "--decode-threads must be >= 1",
    "--max-batch-bytes 0": "--max-batch-bytes must be >= 1",
    "--device tpu": "--device: invalid choice: 'tpu'",
    "--precision fp8": "--precision: invalid choice: 'fp8'",
    "--optimize fast": "--optimize: invalid choice: 'fast'",
    "--decode npu": "--decode: invalid choice: 'npu'",
    "--optimize freeze --embedding-layer avgpool": "drops the hook that reads --embedding-layer",
    "--optimize freeze --precision bf16": "--optimize='freeze' runs in fp32 only",
    "--optimize compile --streams 2": "runs one stream per actor",
    "--tls-cert cert.pem": "TLS needs both --tls-cert and --tls-key",
    "--tls-key key.pem": "TLS needs both --tls-cert and --tls-key",
    "--num-actors 0": "--num-actors must be >= 1",
    "--min-actors -1": "--min-actors must be >= 0",
    "--max-actors 0": "--max-actors must be >= 1",
    "--min-actors 3 --max-actors 2": "--min-actors (3) must be <= --max-actors (2)",
    "--num-actors 5 --max-actors 2": "--num-actors (5) must be within --min-actors",
    "--num-cpus-per-actor -1": "--num-cpus-per-actor must be >= 0",
    "--num-gpus-per-actor -0.5": "--num-gpus-per-actor must be >= 0",
    "--idle-timeout -1": "--idle-timeout must be >= 0",
    "--build-timeout 0": "--build-timeout must be > 0",
    "--place-timeout 0": "--place-timeout must be > 0",
    "--grow-after 0": "--grow-after must be > 0",
    "--shrink-after 0": "--shrink-after must be > 0",
    "--max-in-flight 0": "--max-in-flight must be >= 1",
    "--batch-timeout 0": "--batch-timeout must be > 0",
    "--rows-per-batch 0": "--rows-per-batch must be >= 1",
    "--plan-lease -1": "--plan-lease must be >= 0",
}
RUN = "run --input {dir} --output {dir}/out.parquet"
STREAM = "stream --input {dir} --output {dir}/out --checkpoint {dir}/checkpoint"
COMMAND_CASES = {  # a whole command line -> what the message says
    "demo --images 0 --workdir {dir}/demo": "--images: expected a positive whole number",
    RUN + " --top-k -1": "--top-k: expected a whole number >= 0",
    RUN + " --max-pixels 0": "--max-pixels: expected a positive whole number",
    RUN + " --max-row-bytes 0": "--max-row-bytes: expected a positive whole number",
    RUN + " --progress-interval 0": "--progress-interval: expected a number of seconds > 0",
    RUN + " --mode fast": "--mode: invalid choice: 'fast'",
    RUN + " --seed one": "--seed: invalid int value: 'one'",
    "--log-level loud " + RUN: "--log-level: invalid choice: 'loud'",
    "run --input {dir}/missing --output {dir}/out.parquet": "does not exist",
    "run --input {dir} --output {dir} --weights random": "writing there would replace the input",
    RUN + " --model no_such_net": "no_such_net",
    RUN + " --weights random --model no_such_net": "unknown model 'no_such_net'",
    RUN + " --model resnet18 --weights {dir}/missing.pt": "missing.pt",
    STREAM + " --trigger-seconds 0": "--trigger-seconds: expected a number of seconds > 0",
    STREAM + " --max-files-per-trigger 0": "--max-files-per-trigger: expected a positive",
    STREAM + " --top-k -2": "--top-k: expected a whole number >= 0",
    "pool start --model no_such_net": "no_such_net",
    "pool start --batch-size 0": "--batch-size must be >= 1, got 0",
    "pool scale --name p --num-actors -1": "--num-actors: expected a whole number >= 0",
}
BENCH_CASES = {  # the benchmark's options (hybrid_infer/bench/config.py)
    "--images 0": "--images must be >= 1, got 0",
    "--partitions 0": "--partitions must be >= 1",
    "--batch-size 0": "--batch-size must be >= 1",
    "--threads 0": "--threads must be >= 1",
    "--actors 0": "--actors must be >= 1",
    "--streams 0": "--streams must be >= 1",
    "--spark-slots 0": "--spark-slots must be >= 1",
    "--small-jobs 0": "--small-jobs must be >= 1",
    "--small-rows 0": "--small-rows must be >= 1",
    "--sweep-sizes 256,big": "--sweep-sizes and --sweep-partitions are whole numbers",
    "--sweep-partitions two": "--sweep-sizes and --sweep-partitions are whole numbers",
    "--timeout 0": "--timeout must be > 0 seconds",
    "--contenders hybrid,fastest": "unknown contender fastest",
    "--device tpu": "--device: invalid choice: 'tpu'",
    "--precision fp8": "--precision: invalid choice: 'fp8'",
    "--optimize fast": "--optimize: invalid choice: 'fast'",
    "--images many": "--images: invalid int value: 'many'",
}
CASES = {RUN + " " + options: said for options, said in POOL_CASES.items()}
CASES.update(COMMAND_CASES)
CASES.update({"bench " + options: said for options, said in BENCH_CASES.items()})

DRIVER = textwrap.dedent("""
    import contextlib, io, json, shlex, sys, time
    from hybrid_infer.cli import main

    directory, cases = sys.argv[1], json.loads(sys.argv[2])
    results = {}
    for case in cases:
        err = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(shlex.split(case.format(dir=directory)))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code
        results[case] = {"code": code, "stderr": err.getvalue(),
                         "seconds": time.perf_counter() - started}
    started = {"spark": "pyspark" in sys.modules and
                        sys.modules["pyspark"].SparkContext._active_spark_context is not None,
               "ray": "ray" in sys.modules and sys.modules["ray"].is_initialized()}
    print("RESULT" + json.dumps({"cases": results, "started": started}))
""")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli_input")
    (directory / "a.jpg").write_bytes(b"not needed: nothing is read")
    done = subprocess.run([sys.executable, "-c", DRIVER, str(directory), json.dumps(list(CASES))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    slowest = max(result["cases"], key=lambda case: result["cases"][case]["seconds"])
    print(f"FIGURES cli_usage_errors cases={len(CASES)} slowest_s="
          f"{result['cases'][slowest]['seconds']:.3f} ({slowest})")
    return result


def test_nothing_started(outcomes):
    assert outcomes["started"] == {"spark": False, "ray": False}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_value_is_a_usage_error_that_names_it(outcomes, case):
    outcome = outcomes["cases"][case]
    assert outcome["code"] == 2, outcome
    assert CASES[case] in outcome["stderr"], outcome["stderr"]
    assert "Traceback" not in outcome["stderr"]


def test_the_command_exits_2_on_a_bad_pool_value_before_starting(tmp_path):
    """What the issue saw: `--batch-size 0` started Spark and Ray, then exited 1."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hybrid_infer.cli", "run", "--input",
                           str(tmp_path), "--output", str(tmp_path / "out.parquet"),
                           "--batch-size", "0"], capture_output=True, text=True, timeout=120)
    print(f"FIGURES cli_batch_size_0_s={time.perf_counter() - started:.2f}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "hybrid-infer: error: --batch-size must be >= 1, got 0"


def test_every_pool_setting_is_an_option_with_its_help_and_default():
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    options = {option: action for action in run._actions for option in action.option_strings}
    for part in PARTS.values():
        docs = field_docs(part)
        for field in dataclasses.fields(part):
            action = options[option_name(field.name)]
            assert action.dest == field.name
            assert docs[field.name] and action.help.startswith(docs[field.name][:40])
            if field.default is not None:
                assert f"(default: {field.default})" in action.help


@pytest.mark.parametrize("classes, choices, cases", [
    (tuple(PARTS.values()), POOL_CHOICES, POOL_CASES),
    ((BenchConfig,), BENCH_CHOICES, BENCH_CASES)])
def test_every_option_that_takes_a_number_or_a_choice_has_a_bad_value_case(classes, choices,
                                                                          cases):
    numbers = ("int", "int | None", "float", "float | None")
    options = {option_name(f.name) for cls in classes for f in dataclasses.fields(cls)
               if f.type in numbers or f.name in choices}
    covered = {word for case in cases for word in case.split() if word.startswith("--")}
    assert options <= covered, options - covered
