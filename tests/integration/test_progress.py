"""Live progress and a quiet console (the demo's, as a user runs it: e2e/test_demo.py).

- `run`/`demo` show rows actually answered, images/s and ETA while the job runs: from
  the pool actors' per-job row counters (hybrid, raydp), from Spark's status tracker
  (udf); off a terminal, one line per update.
- Ray's and Spark's own messages go to a log file that the summary names, not to the
  console (`--verbose` keeps them there); a session that already existed keeps its
  Spark log level.
"""

from __future__ import annotations

import io
import threading

import pytest

from faults import SMALL_MODEL, images_frame, small_jpegs, small_preprocess, small_settings
from progress_lines import progress_rows


def test_verbose_is_accepted_before_and_after_the_command():
    from hybrid_infer.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--verbose", "demo"]).verbose is True
    assert parser.parse_args(["run", "--input", "a", "--output", "b", "--verbose"]).verbose
    assert parser.parse_args(["pool", "status", "--verbose"]).verbose is True
    assert parser.parse_args(["demo"]).verbose is False


# -- where rows done come from -------------------------------------------------------------
@pytest.mark.slow
def test_pool_counts_each_jobs_rows_apart_on_a_shared_warm_pool(spark, ray_address,
                                                                small_pool):
    """Two jobs at once on one warm pool: each job's count is its own rows, exactly; a
    pool-wide counter (or a baseline snapshot of it) would mix them."""
    from hybrid_infer import infer
    from hybrid_infer.progress import PoolJobRows

    before = small_pool.status()["rows"]
    sizes = {"progress-job-a": 24, "progress-job-b": 10}
    failures = []

    def run(job_id: str, count: int) -> None:
        try:
            infer(images_frame(spark, small_jpegs(count, seed=count)), SMALL_MODEL,
                  weights="random", pool=small_settings(), preprocess=small_preprocess(),
                  ray_address=ray_address, rows_per_batch=2, job_id=job_id).collect()
        except Exception as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in sizes.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not failures, failures
    for job_id, count in sizes.items():
        assert PoolJobRows(job_id)() == count, job_id
    assert PoolJobRows("progress-job-never-run")() == 0
    assert small_pool.status()["rows"] - before == sum(sizes.values())


def test_spark_rows_follow_this_jobs_group_only(spark):
    from hybrid_infer.progress import SparkTaskRows, spark_job_group

    spark.range(1000, numPartitions=3).count()  # another job, not in the group
    with spark_job_group(spark, "progress-group-a"):
        spark.range(0, 1000, 1, 4).write.format("noop").mode("overwrite").save()
    assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") is None  # restored
    assert SparkTaskRows(spark, "progress-group-a", 1000)() == 1000
    assert SparkTaskRows(spark, "progress-group-none", 1000)() == 0


# -- the line itself ---------------------------------------------------------------------
def test_off_a_terminal_each_update_is_a_line_and_the_end_is_every_row():
    from hybrid_infer.progress import JobProgress

    stream = io.StringIO()
    counts = iter([0, 5, 5, 12])
    polled = threading.Event()

    def rows_done() -> int:
        value = next(counts, None)
        if value is None:
            polled.set()
            return 12
        return value

    with JobProgress(rows_done, 20, interval_s=0.05, stream=stream):
        assert polled.wait(30)
    text = stream.getvalue()
    assert "\r" not in text
    rows = progress_rows(text, 20)
    assert rows[0] == 0 and rows[-1] == 20 and {5, 12} <= set(rows), text
    assert rows == sorted(rows)


def test_the_last_line_is_every_row_even_right_after_the_line_before():
    """A job that ends within tqdm's mininterval of its last update still prints its
    last count (the demo once ended on 60/64)."""
    from hybrid_infer.progress import ProgressLine

    stream = io.StringIO()
    line = ProgressLine(64, stream, interval_s=60.0)  # mininterval 30 s
    line.show(60)
    line.finish(64)
    line.close()
    assert progress_rows(stream.getvalue(), 64)[-1] == 64, stream.getvalue()


def test_a_failed_count_does_not_fail_the_job_and_a_failed_job_does_not_claim_every_row():
    from hybrid_infer.progress import JobProgress

    stream = io.StringIO()
    polls = []

    def rows_done() -> int:
        polls.append(1)
        if len(polls) == 1:
            raise ConnectionError("a pool restarting")
        return 3

    with pytest.raises(RuntimeError):
        with JobProgress(rows_done, 10, interval_s=0.05, stream=stream):
            while len(polls) < 3:
                threading.Event().wait(0.05)
            raise RuntimeError("the job failed")
    rows = progress_rows(stream.getvalue(), 10)
    assert rows[-1] == 3, stream.getvalue()


def test_job_row_counter_keeps_only_recent_jobs():
    from hybrid_infer.actor.job_rows import JobRowCounter

    counter = JobRowCounter(keep_jobs=2)
    counter.add("a", 3)
    counter.add("b", 4)
    counter.add("a", 2)   # "a" is the most recent again
    counter.add("c", 1)   # "b" goes
    counter.add(None, 9)  # a job without an id is not counted
    assert (counter.rows("a"), counter.rows("b"), counter.rows("c")) == (5, 0, 1)


# -- a user's Spark session keeps its log level ---------------------------------------------
def root_log_level(spark) -> str:
    jvm = spark.sparkContext._jvm
    return str(jvm.org.apache.logging.log4j.LogManager.getRootLogger().getLevel())


@pytest.mark.slow
def test_an_existing_session_keeps_its_log_level(spark, ray_address, small_pool):
    from hybrid_infer import infer
    from hybrid_infer.runtime import start_runtime, start_spark

    previous = root_log_level(spark)
    spark.sparkContext.setLogLevel("WARN")   # the user's choice
    try:
        session, started = start_spark("local[2]")   # finds the user's session
        assert session.sparkContext is spark.sparkContext and not started
        with start_runtime("local[2]", ray_address) as runtime:
            assert not runtime.started_spark  # so it does not stop the user's session
        rows = infer(images_frame(spark, small_jpegs(6)), SMALL_MODEL, weights="random",
                     pool=small_settings(), preprocess=small_preprocess(),
                     ray_address=ray_address).collect()
        assert len(rows) == 6 and not [row for row in rows if row["error"]]
        assert root_log_level(spark) == "WARN"
    finally:
        spark.sparkContext.setLogLevel(previous)
