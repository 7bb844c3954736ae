"""One batch job: read the input, run a mode, write Parquet, summarise what happened."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from hybrid_infer.errors import HybridInferError, engine_errors
from hybrid_infer.output import ERROR

if TYPE_CHECKING:
    from hybrid_infer.api import JobOptions
    from hybrid_infer.pool.settings import PoolSettings


@dataclass
class JobSummary:
    rows: int
    failed: int
    seconds: float
    output: str
    mode: str
    model: str
    errors_by_reason: dict = field(default_factory=dict)
    #: For a folder of images: the files it held that come back as rows, and the
    #: lines naming what was skipped and why.
    input_files: int | None = None
    skipped: list = field(default_factory=list)
    #: The file holding Ray's and Spark's own messages (the command line's), if any.
    log: str | None = None

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        """The summary as JSON-ready values (`hybrid-infer run --json`)."""
        return {"rows": self.rows, "succeeded": self.rows - self.failed,
                "failed": self.failed, "errors_by_reason": dict(self.errors_by_reason),
                "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 3), "output": self.output,
                "mode": self.mode, "model": self.model, "log": self.log}

    def render(self) -> str:
        lines = [
            f"mode {self.mode}, model {self.model}",
            f"rows {self.rows}, succeeded {self.rows - self.failed}, failed {self.failed}",
            *self._input_lines(),
            f"wall time {self.seconds:.1f} s, {self.images_per_s:.1f} images/s",
            f"output {self.output}",
            *([f"log of Ray and Spark {self.log}"] if self.log else []),
        ]
        for reason, count in sorted(self.errors_by_reason.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count} rows failed: {reason}")
        return "\n".join(lines)

    def _input_lines(self) -> list[str]:
        if self.input_files is None:
            return []
        lines = [f"input files {self.input_files}" + (
            ", one row each" if self.input_files == self.rows else
            f", but {self.rows} rows came back")]
        return lines + [f"  skipped: {line}" for line in self.skipped]


def run_job(spark, *, input_path: str, output_path: str, model, mode: str = "hybrid",
            job: JobOptions | None = None, pool: PoolSettings | None = None,
            ray_address: str | None = None, model_name: str | None = None,
            progress: bool = True, progress_interval_s: float | None = None,
            overwrite: bool = False) -> JobSummary:
    """Read `input_path`, infer (hybrid_infer.infer with `model`, `mode`, `job`, `pool` and
    `ray_address`), write Parquet at `output_path`.

    The input column is job.input_col (default "content"). The output is checked before
    the pool starts (hybrid_infer.output_path): never the input or around it, never over
    data the engine did not write unless `overwrite`, and writable. A completed output
    gets the engine's marker file. `progress` prints rows done, images/s and ETA on
    stderr every `progress_interval_s` (progress.py).
    """
    from hybrid_infer.api import JobOptions, infer
    from hybrid_infer.output_path import (check_output, output_exists, remove_failed_output,
                                          write_marker)
    from hybrid_infer.progress import INTERVAL_S, job_progress
    from hybrid_infer.sources import read_input_listed

    job = job or JobOptions()
    job = replace(job, input_col=job.input_col or "content")
    # the progress line follows the job by this id: the pool's actors count its rows
    # under it; in udf mode it names the Spark job group (or Connect session tag)
    job_id = job.job_id or f"job-{uuid.uuid4().hex}"
    if mode != "udf":
        job = replace(job, job_id=job_id)
    check_output(input_path, output_path, overwrite=overwrite, spark=spark)
    existed = output_exists(output_path)
    df, listing = read_input_listed(spark, input_path, column=job.input_col,
                                    max_row_bytes=job.max_row_bytes)
    started = time.time()
    watching = (job_progress(spark, mode=mode, job_id=job_id, total_rows=df.count(),
                             interval_s=progress_interval_s or INTERVAL_S)
                if progress else contextlib.nullcontext())
    try:
        with engine_errors(), contextlib.ExitStack() as watch:
            if mode == "raydp":  # infer() itself runs the rows through the pool
                watch.enter_context(watching)
            # hybrid and udf: infer() starts or finds the pool; the rows flow in the write
            result = infer(df, model, mode=mode, job=job, pool=pool, ray_address=ray_address)
            if mode != "raydp":
                watch.enter_context(watching)
            result.write.mode("overwrite").parquet(output_path)
    except HybridInferError:
        if not existed:
            remove_failed_output(output_path)
        raise
    except Exception as exc:
        failure = _write_failure(exc, output_path)
        if not existed:
            remove_failed_output(output_path)
        if failure is None:
            raise
        raise failure from exc
    seconds = time.time() - started
    write_marker(output_path, input_path=input_path, spark=spark)
    summary = summarise(spark, output_path, seconds=seconds, mode=mode,
                        model=model_name or str(model))
    if listing is not None:
        summary.input_files, summary.skipped = listing.files, listing.skipped_lines()
    return summary


def _write_failure(exc: BaseException, output_path: str):
    """A Spark job that failed for a reason of its own (disk full, permissions): its
    innermost cause in one line, not the JVM's trace. None for a non-Spark exception."""
    from hybrid_infer.output_path import write_failure

    text = str(exc)
    if type(exc).__name__ == "Py4JJavaError" or "java." in text or "org.apache" in text:
        return write_failure(exc, output_path)
    return None


def summarise(spark, output_path: str, **fields) -> JobSummary:
    written = spark.read.parquet(output_path)
    reasons = Counter()
    for row in written.where(f"{ERROR} IS NOT NULL").groupBy(ERROR).count().collect():
        reasons[_reason_kind(row[ERROR])] += row["count"]
    return JobSummary(rows=written.count(), failed=sum(reasons.values()), output=output_path,
                      errors_by_reason=dict(reasons), **fields)


def _reason_kind(reason: str) -> str:
    """Group reasons by their kind: the text before the first ':' (details differ per row)."""
    return reason.split(":", 1)[0]
