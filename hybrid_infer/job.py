"""One batch job: read the input, run a mode, write Parquet, summarise what happened."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from hybrid_infer.output import ERROR


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

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def render(self) -> str:
        lines = [
            f"mode {self.mode}, model {self.model}",
            f"rows {self.rows}, succeeded {self.rows - self.failed}, failed {self.failed}",
            *self._input_lines(),
            f"wall time {self.seconds:.1f} s, {self.images_per_s:.1f} images/s",
            f"output {self.output}",
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


def run_job(spark, *, input_path: str, output_path: str, input_col: str = "content",
            progress: bool = True, model_name: str | None = None,
            **infer_options) -> JobSummary:
    """Read `input_path`, infer with `infer_options` (see hybrid_infer.infer), write Parquet."""
    from hybrid_infer.api import infer
    from hybrid_infer.progress import SparkProgress
    from hybrid_infer.sources import read_input_listed

    df, listing = read_input_listed(spark, input_path, column=input_col)
    started = time.time()
    result = infer(df, input_col=input_col, **infer_options)
    total = df.count() if progress else 0
    try:
        if progress:
            with SparkProgress(spark, total):
                result.write.mode("overwrite").parquet(output_path)
        else:
            result.write.mode("overwrite").parquet(output_path)
    except Exception as exc:
        engine_error = error_from_spark(exc)
        if engine_error is None:
            raise
        raise engine_error from exc
    seconds = time.time() - started
    summary = summarise(spark, output_path, seconds=seconds,
                        mode=infer_options.get("mode", "hybrid"),
                        model=model_name or str(infer_options.get("model", "resnet18")))
    if listing is not None:
        summary.input_files, summary.skipped = listing.files, listing.skipped_lines()
    return summary


def error_from_spark(exc: BaseException):
    """The engine error a Spark job failed with (fail-fast, pool gone, timeout), or None.

    Spark wraps a task's exception in a long JVM trace; the user needs its first line.
    """
    import re

    from hybrid_infer import errors
    from hybrid_infer.api import FAIL_FAST_MESSAGE

    text = str(exc)
    found = re.search(re.escape(FAIL_FAST_MESSAGE) + r"[^\n]*", text)
    if found:
        return errors.InputError(found.group(0).rstrip("'\". ") + ". Fix or drop the row, "
                                 "or run without fail_fast to get it as an error value")
    found = re.search(r"hybrid_infer\.errors\.(\w+): ([^\n]*)", text)
    if found and isinstance(getattr(errors, found.group(1), None), type):
        return getattr(errors, found.group(1))(found.group(2))
    found = re.search(r"TimeoutError: ([^\n]*batch_timeout_s[^\n]*)", text)
    if found:
        return errors.PoolError(found.group(1))
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
