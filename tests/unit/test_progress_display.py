"""The progress line: one line per update off a terminal, every row at the end, a failed
count never failing the job; and the actor's per-job row counter. Pure code (on the real
Spark and Ray: tests/integration/test_progress.py)."""

from __future__ import annotations

import io
import threading

import pytest

from progress_lines import progress_rows


def test_verbose_is_accepted_before_and_after_the_command():
    from hybrid_infer.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--verbose", "demo"]).verbose is True
    assert parser.parse_args(["run", "--input", "a", "--output", "b", "--verbose"]).verbose
    assert parser.parse_args(["pool", "status", "--verbose"]).verbose is True
    assert parser.parse_args(["demo"]).verbose is False


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
