"""One batch job: read the input, run a mode, write Parquet, summarise what happened."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from hybrid_infer.errors import engine_errors
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

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def render(self) -> str:
        lines = [
            f"mode {self.mode}, model {self.model}",
            f"rows {self.rows}, succeeded {self.rows - self.failed}, failed {self.failed}",
            f"wall time {self.seconds:.1f} s, {self.images_per_s:.1f} images/s",
            f"output {self.output}",
        ]
        for reason, count in sorted(self.errors_by_reason.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count} rows failed: {reason}")
        return "\n".join(lines)


def run_job(spark, *, input_path: str, output_path: str, input_col: str = "content",
            progress: bool = True, model_name: str | None = None,
            **infer_options) -> JobSummary:
    """Read `input_path`, infer with `infer_options` (see hybrid_infer.infer), write Parquet."""
    from hybrid_infer.api import infer
    from hybrid_infer.progress import SparkProgress
    from hybrid_infer.sources import read_input

    df = read_input(spark, input_path, column=input_col)
    started = time.time()
    result = infer(df, input_col=input_col, **infer_options)
    total = df.count() if progress else 0
    with engine_errors():
        if progress:
            with SparkProgress(spark, total):
                result.write.mode("overwrite").parquet(output_path)
        else:
            result.write.mode("overwrite").parquet(output_path)
    seconds = time.time() - started
    return summarise(spark, output_path, seconds=seconds,
                     mode=infer_options.get("mode", "hybrid"),
                     model=model_name or str(infer_options.get("model", "resnet18")))


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
