"""Live progress and a quiet console, on the real Spark and Ray (the demo's, as a user
runs it: e2e/test_demo.py; the progress line itself: unit/test_progress_display.py).

- `run`/`demo` show rows actually answered, images/s and ETA while the job runs: from
  the pool actors' per-job row counters (hybrid, raydp), from Spark's status tracker
  (udf); off a terminal, one line per update.
- Ray's and Spark's own messages go to a log file that the summary names, not to the
  console (`--verbose` keeps them there); a session that already existed keeps its
  Spark log level.
"""

from __future__ import annotations

import threading

import pytest

from faults import SMALL_MODEL, images_frame, small_jpegs, small_preprocess, small_settings


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
