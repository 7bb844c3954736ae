"""Issue 13: the command line's conventions and its care for data, as a user meets them.

Every test runs the real `hybrid-infer` in a subprocess with a clean environment (no
RAY_* variables, a HOME without a Ray token) unless it sets one on purpose. Exit codes:
0 success, 1 runtime error, 2 usage error, 3 some rows failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from command_line import cli, home_env
from faults import SMALL_MODEL, rgb_jpeg
from paths import REPO


def digest_tree(root) -> dict:
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return found


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        (folder / f"img{index}.jpg").write_bytes(rgb_jpeg(seed=index))
    return folder


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "java." not in result.stderr
    return lines[0]


def test_version_and_usage_errors(tmp_path):
    from hybrid_infer import __version__

    shown = cli(tmp_path, "--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"hybrid-infer {__version__}"
    assert cli(tmp_path, "run", "--output", "x").returncode == 2        # --input missing
    assert cli(tmp_path, "run", "--input", "a", "--output", "b",
               "--no-such-flag").returncode == 2
    helped = cli(tmp_path, "--help")
    assert "exit codes: 0 success, 1 runtime error, 2 usage error, 3 some rows" in \
        " ".join(helped.stdout.split())


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_output_over_the_input_is_refused_and_the_input_kept(tmp_path, photos, where):
    output = {"same": photos, "inside": photos / "predictions",
              "around": tmp_path}[where]
    before = digest_tree(tmp_path)
    started = time.perf_counter()
    result = cli(tmp_path, "run", "--input", str(photos), "--output", str(output),
                 "--model", SMALL_MODEL, "--weights", "random", "--overwrite")
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result)
    assert {"same": "is the input", "inside": "is inside the input",
            "around": "contains the input"}[where] in line, line
    assert time.perf_counter() - started < 60   # refused before Spark, Ray or a pool start
    assert digest_tree(tmp_path) == before      # every input byte still there


def test_existing_foreign_folder_is_not_replaced_without_overwrite(tmp_path, photos):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    (notes / "cat.jpg").write_bytes(rgb_jpeg(seed=7))
    before = digest_tree(notes)
    result = cli(tmp_path, "run", "--input", str(photos), "--output", str(notes),
                 "--model", SMALL_MODEL, "--weights", "random")
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result)
    assert "already exists" in line and "--overwrite" in line, line
    assert digest_tree(notes) == before
    a_file = tmp_path / "report.pdf"
    a_file.write_bytes(b"%PDF-1.4")
    result = cli(tmp_path, "run", "--input", str(photos), "--output", str(a_file),
                 "--model", SMALL_MODEL, "--weights", "random")
    assert result.returncode == 2 and "is a file" in one_error_line(result)
    assert a_file.read_bytes() == b"%PDF-1.4"


@pytest.mark.parametrize("output", ["/sys/hybrid-infer-test.parquet", "{tmp}/blocker/out"])
def test_unwritable_output_fails_in_one_line_before_anything_starts(tmp_path, photos,
                                                                   output):
    (tmp_path / "blocker").write_text("a file where a folder would go")
    started = time.perf_counter()
    result = cli(tmp_path, "run", "--input", str(photos), "--output",
                 output.format(tmp=tmp_path), "--model", SMALL_MODEL, "--weights", "random")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "cannot write the output" in one_error_line(result)
    assert time.perf_counter() - started < 60


def test_engine_output_detection():
    from hybrid_infer.output_path import MARKER, is_engine_output

    assert is_engine_output([])
    assert is_engine_output(["part-00000-abc.snappy.parquet", "_SUCCESS",
                             ".part-00000-abc.snappy.parquet.crc", "._SUCCESS.crc"])
    assert is_engine_output([MARKER, "part-00000.parquet", "anything"])
    assert not is_engine_output(["part-00000.parquet", "holiday.jpg"])


# -- against a Ray cluster with token authentication (conftest's head) ----------------
def test_token_auth_at_an_explicit_address(tmp_path, ray_address):
    from runtime_env import RAY_ENV

    started = time.perf_counter()
    refused = cli(tmp_path, "pool", "status", "--ray-address", ray_address)
    assert refused.returncode == 1, refused.stderr[-3000:]
    line = one_error_line(refused)
    assert "token authentication" in line and "RAY_AUTH_MODE=token" in line \
        and "RAY_AUTH_TOKEN" in line, line
    assert time.perf_counter() - started < 30   # not 20 s of retries, then a vague error

    # the token alone is enough: the CLI turns token mode on for that address
    token = RAY_ENV["RAY_AUTH_TOKEN"]
    listed = cli(tmp_path, "pool", "status", "--ray-address", ray_address, "--json",
                 RAY_AUTH_TOKEN=token)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert isinstance(json.loads(listed.stdout), list)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(token)   # or Ray's token file
    table = cli(tmp_path, "pool", "status", "--ray-address", ray_address)
    assert table.returncode == 0, table.stderr[-3000:]
    assert not table.stdout.lstrip().startswith(("[", "{"))


@pytest.mark.slow
def test_ray_address_json_summary_failed_rows_and_reruns(tmp_path, photos, ray_address):
    """`ray job submit -- hybrid-infer run` sets RAY_ADDRESS: the job joins that cluster
    (its pool is there afterwards). A job with a bad row exits 3; --json prints one JSON
    object; a rerun may replace the engine's own output."""
    from runtime_env import RAY_ENV

    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    output = tmp_path / "predictions"
    env = dict(RAY_ADDRESS=ray_address, RAY_AUTH_TOKEN=RAY_ENV["RAY_AUTH_TOKEN"])
    # --batch-size 9, used by no other test: this test's own pool, which it then stops
    # (the suite's cluster holds other tests' warm pools of the same model).
    run = ["run", "--input", str(photos), "--output", str(output), "--model", SMALL_MODEL, "--weights", "random",
           "--num-actors", "1", "--batch-size", "9", "--spark-master", "local[1]",
           "--no-progress", "--json"]
    first = cli(tmp_path, *run, timeout=400, **env)
    assert first.returncode == 3, first.stderr[-3000:]
    summary = json.loads(first.stdout)          # stdout is the JSON object, nothing else
    assert (summary["rows"], summary["failed"], summary["succeeded"]) == (4, 1, 3), summary
    assert os.path.exists(output / "_HYBRID_INFER")

    (photos / "broken.jpg").unlink()
    second = cli(tmp_path, *run, timeout=400, **env)  # replaces its own earlier output
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["failed"] == 0

    status = cli(tmp_path, "pool", "status", **env)   # RAY_ADDRESS again, no flag
    assert status.returncode == 0, status.stderr[-3000:]
    header, *rows = status.stdout.strip().splitlines()
    assert header.split()[:4] == ["NAME", "MODEL", "DEVICE", "ACTORS"], status.stdout
    mine = [r for r in rows if SMALL_MODEL in r and r.split()[3] == "1"]
    assert mine, status.stdout
    name = mine[0].split()[0]
    stopped = cli(tmp_path, "pool", "stop", "--name", name, "--json", **env)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert json.loads(stopped.stdout) == [{"name": name, "stopped_actors": 1}]


@pytest.mark.slow
def test_readmes_ray_start_listens_on_loopback_only(tmp_path):
    """README's `ray start --head` line, run as shown (plus a free port, --block and a
    private temp dir): every socket its processes listen on is on 127.0.0.1."""
    import re
    import shlex
    import shutil
    import tempfile

    import psutil

    from runtime_env import free_port, launch_ray_head, stop_group

    with open(os.path.join(REPO,
                           "README.md")) as handle:
        (line,) = [ln for ln in handle if re.match(r"\S+=\S+ ray start --head .*127\.0\.0\.1", ln)]
    words = shlex.split(line.split("#")[0])
    env_words = [w for w in words if re.match(r"^[A-Z_]+=", w)]
    argv = words[len(env_words):]
    assert argv[:3] == ["ray", "start", "--head"]
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Unix socket paths
    head = launch_ray_head(
        [*argv[3:], f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        env=home_env(tmp_path, **dict(w.split("=", 1) for w in env_words),
                     RAY_AUTH_MODE="disabled"), port=port)
    try:
        deadline = time.time() + 90
        listening = set()
        while time.time() < deadline:
            tree = [head.pid] + [p.pid for p in psutil.Process(head.pid).children(recursive=True)]
            listening = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                         if c.status == psutil.CONN_LISTEN and c.pid in tree}
            if port in {p for _, p in listening} and len(listening) >= 3:
                break
            time.sleep(2)
        assert port in {p for _, p in listening}, listening
        assert {ip for ip, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
    finally:
        stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_failed_spark_write_is_one_line_and_leaves_no_empty_output(tmp_path):
    from hybrid_infer.output_path import remove_failed_output, write_failure

    trace = ("An error occurred while calling o123.parquet.\n"
             ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 "
             "in stage 3.0 failed 1 times\n\tat org.apache.spark.scheduler.DAGScheduler"
             ".failJobAndIndependentStages(DAGScheduler.scala:2856)\n" + "\tat x.y(Z.java:1)\n" * 400
             + "Caused by: org.apache.spark.SparkException: Task failed while writing rows.\n"
             + "\tat x.y(Z.java:1)\n" * 50
             + "Caused by: java.io.IOException: No space left on device\n\tat x.y(Z.java:1)\n")
    error = write_failure(RuntimeError(trace), "/data/out")
    assert str(error) == "the Spark job writing '/data/out' failed: No space left on device"
    created = tmp_path / "out"
    (created / "_temporary" / "0").mkdir(parents=True)
    remove_failed_output(str(created))
    assert not created.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("not Spark's")
    remove_failed_output(str(kept))
    assert (kept / "notes.txt").exists()


def test_ray_address_from_the_environment_is_the_default(monkeypatch):
    from hybrid_infer.cli import build_parser

    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    parser = build_parser()
    assert parser.parse_args(["run", "--input", "a", "--output", "b"]).ray_address == \
        "10.1.2.3:6379"
    assert parser.parse_args(["pool", "status"]).ray_address == "10.1.2.3:6379"
    assert parser.parse_args(["run", "--input", "a", "--output", "b", "--ray-address",
                              "auto"]).ray_address == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # a dashboard, for `ray job`
    parser = build_parser()
    assert parser.parse_args(["run", "--input", "a", "--output", "b"]).ray_address is None
    assert parser.parse_args(["pool", "status"]).ray_address == "auto"
    monkeypatch.delenv("RAY_ADDRESS")
    assert build_parser().parse_args(["demo"]).ray_address is None
