"""A running job's progress on stderr: rows done / total, images/s, ETA.

Where "rows done" comes from depends on the mode:

- hybrid, raydp: the pool's actors count the rows they answer under the job's id
  (JobOptions.job_id, carried in its streams' options) and the driver, which has Ray,
  adds their counts up at every poll (PoolJobRows): rows actually inferred, as they
  are answered. A per-job id rather than a snapshot of pool-wide counters at job start:
  a warm pool may serve another job at the same time, whose rows a snapshot would count
  as this job's, and a healed actor starts its counters from zero.
- udf: there is no pool; Spark tells how many tasks of this job's stages finished,
  which, with the row count known up front, estimates rows done. A classic session
  asks its status tracker for the job group's stages (SparkTaskRows); a Spark Connect
  session has no SparkContext, so the job's operations carry a session tag and a
  progress handler (Spark 4's `registerProgressHandler`) receives their stages
  (ConnectTaskRows).

tqdm formats and paces the line: on a terminal it is redrawn in place; anywhere else
(a file, a pipe, a CI log) each update is a line of its own, so lines never run together.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

#: How often the line is updated by default (seconds).
INTERVAL_S = 2.0
#: Off a terminal, an unchanged line is written again only this often (a job that
#: waits, e.g. on a pool's start, still shows it is alive without filling a log).
QUIET_REPEAT_S = 30.0

# rate_noinv: always images/s (tqdm's rate_fmt turns a slow rate into "s/ images")
_TTY_FORMAT = "rows {n}/{total} |{bar}| {percentage:3.0f}%  {rate_noinv_fmt}  ETA {remaining}"
_LINE_FORMAT = ("rows {n}/{total} ({percentage:.0f}%)  {rate_noinv_fmt}  elapsed {elapsed}  "
                "ETA {remaining}")


class PoolJobRows:
    """Rows the pools' actors answered for `job_id` (hybrid and raydp modes).

    Every pool of the engine's namespace is asked (the job id is unique: only the pool
    serving this job has counted any), so the job's pool need not be known here, and a
    pool's actors are listed again at every poll (a heal or scale changes them). An
    actor that died keeps the count it last reported.
    """

    def __init__(self, job_id: str, *, timeout_s: float = 5.0):
        self.job_id = job_id
        self._timeout_s = timeout_s
        self._last: dict[str, int] = {}  # actor id -> rows it last reported

    def __call__(self) -> int:
        import ray

        from hybrid_infer.pool.registry import Pool

        if not ray.is_initialized():  # never let a poll start a Ray of its own
            return sum(self._last.values())
        asked = {}
        for name in Pool.names():
            try:
                for actor in Pool.get(name).actors():
                    asked[actor.job_rows.remote(self.job_id)] = actor._actor_id.hex()
            except Exception as exc:  # stopped since listed, or an older engine's pool
                log.debug("progress: pool %s did not answer: %s", name, exc)
        ready, _ = (ray.wait(list(asked), num_returns=len(asked), timeout=self._timeout_s)
                    if asked else ([], []))
        for ref in ready:
            try:
                self._last[asked[ref]] = ray.get(ref)
            except Exception as exc:  # died since listed: its last count stands
                log.debug("progress: an actor did not report: %s", exc)
        return sum(self._last.values())


def _estimate(total_rows: int, done_tasks: int, tasks: int) -> int:
    """Rows done from tasks done: rows per task are not known before a task ends."""
    return total_rows * done_tasks // tasks if tasks else 0


class SparkTaskRows:
    """Rows done estimated from finished tasks of the Spark jobs in group `job_id` (udf
    mode, classic session): total x tasks done / tasks. The caller runs the job's Spark
    actions inside `spark_job_group(spark, job_id)`."""

    def __init__(self, spark, job_id: str, total_rows: int):
        self._tracker = spark.sparkContext.statusTracker()
        self.job_id = job_id
        self._total = total_rows

    def __call__(self) -> int:
        done = tasks = 0
        for spark_job in self._tracker.getJobIdsForGroup(self.job_id):
            job = self._tracker.getJobInfo(spark_job)
            for stage_id in (job.stageIds if job is not None else []):
                stage = self._tracker.getStageInfo(stage_id)
                if stage is not None:
                    done += stage.numCompletedTasks
                    tasks += stage.numTasks
        return _estimate(self._total, done, tasks)


class ConnectTaskRows:
    """The same estimate for a Spark Connect session (udf mode), from the stages that
    Spark 4's progress handler reports for the operations run inside `watch()`: the
    session's operations are tagged with `job_id` meanwhile (so `interruptTag` stops
    them), and every operation the session runs then is counted as the job's."""

    def __init__(self, spark, job_id: str, total_rows: int):
        self._spark = spark
        self.job_id = job_id
        self._total = total_rows
        self._stages: dict[tuple[str, int], tuple[int, int]] = {}  # -> (done, tasks)
        self._lock = threading.Lock()

    def _on_progress(self, stages, inflight_tasks, operation_id, done) -> None:
        with self._lock:
            for stage in stages:
                self._stages[(operation_id, stage.stage_id)] = (stage.num_completed_tasks,
                                                               stage.num_tasks)

    @contextlib.contextmanager
    def watch(self):
        self._spark.addTag(self.job_id)
        self._spark.registerProgressHandler(self._on_progress)
        try:
            yield
        finally:
            self._spark.removeProgressHandler(self._on_progress)
            self._spark.removeTag(self.job_id)

    def __call__(self) -> int:
        with self._lock:
            counts = list(self._stages.values())
        return _estimate(self._total, sum(d for d, _ in counts), sum(t for _, t in counts))


@contextlib.contextmanager
def spark_job_group(spark, group_id: str):
    """Tag the Spark jobs this thread starts with `group_id`; the previous group after."""
    context = spark.sparkContext
    previous = context.getLocalProperty("spark.jobGroup.id")
    context.setLocalProperty("spark.jobGroup.id", group_id)
    try:
        yield
    finally:
        context.setLocalProperty("spark.jobGroup.id", previous)


@contextlib.contextmanager
def _spark_task_rows(spark, job_id: str, total_rows: int):
    """The rows-done estimate of the udf mode, for a classic or a Connect session,
    counting the Spark jobs run inside this block."""
    from hybrid_infer.runtime import is_connect

    if is_connect(spark):
        rows = ConnectTaskRows(spark, job_id, total_rows)
        with rows.watch():
            yield rows
    else:
        with spark_job_group(spark, job_id):
            yield SparkTaskRows(spark, job_id, total_rows)


class _OneLinePerUpdate:
    """A file for tqdm that writes each in-place redraw ('\\r' + line) as its own line."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()


class ProgressLine:
    """tqdm's progress line for `total` rows on `stream`."""

    def __init__(self, total: int, stream, interval_s: float):
        from tqdm import tqdm

        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._repeat_s = interval_s if self.tty else QUIET_REPEAT_S
        # miniters=1: tqdm's adaptive minimum would skip updates smaller than earlier ones;
        # the poller paces the line, mininterval only guards against a burst of updates.
        self._bar = tqdm(total=total, unit=" images", miniters=1,
                         mininterval=interval_s / 2, file=stream if self.tty else
                         _OneLinePerUpdate(stream), dynamic_ncols=self.tty,
                         leave=self.tty,  # off a terminal the last update was the last line
                         bar_format=_TTY_FORMAT if self.tty else _LINE_FORMAT)

    def show(self, rows: int) -> None:
        """Rows done now; never goes back (a stage retried, an actor lost)."""
        rows = min(rows, self._bar.total)
        if rows > self._bar.n:
            self._bar.update(rows - self._bar.n)
        elif time.time() - self._bar.last_print_t >= self._repeat_s:
            self._bar.refresh()

    def finish(self, rows: int) -> None:
        """The last count, printed even within `mininterval` of the line before (which
        tqdm's update would skip, leaving a finished job's last line short of it)."""
        self.show(rows)
        if self._bar.last_print_n != self._bar.n:
            self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


class JobProgress:
    """Polls `rows_done` every `interval_s` on a thread and shows it; at the end of a job
    that succeeded, every row is done."""

    def __init__(self, rows_done: Callable[[], int], total_rows: int, *,
                 interval_s: float = INTERVAL_S, stream=None):
        self._rows_done = rows_done
        self._total = total_rows
        self._interval_s = interval_s
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="job-progress")
        self._line = None

    def __enter__(self) -> "JobProgress":
        self._line = ProgressLine(self._total, self._stream, self._interval_s)
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self._line.finish(self._total)
        self._line.close()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._line.show(self._rows_done())
            except Exception as exc:  # a progress line never fails the job
                log.debug("progress: could not count rows: %s", exc)


@contextlib.contextmanager
def job_progress(spark, *, mode: str, job_id: str, total_rows: int,
                 interval_s: float = INTERVAL_S, stream=None):
    """The progress of the job `job_id` in `mode` (see the module's docstring), entered
    around everything that infers (in the raydp mode, infer() itself does)."""
    if mode == "udf":
        with _spark_task_rows(spark, job_id, total_rows) as rows, JobProgress(
                rows, total_rows, interval_s=interval_s, stream=stream):
            yield
    else:
        with JobProgress(PoolJobRows(job_id), total_rows, interval_s=interval_s,
                         stream=stream):
            yield
