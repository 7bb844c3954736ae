"""Structured Streaming: image files arriving in a folder -> Parquet, exactly once.

`infer()` is plan-building only, so it works on a streaming DataFrame as on a batch one:
the pool is found or started once, when the query is defined, and every micro-batch's
tasks stream their rows to that same warm pool. Spark's file sink and the query's
checkpoint make the output exactly once across a driver restart: a restarted query
resumes from the checkpoint, re-runs at most the micro-batch that was not committed,
and the sink's metadata log hides any files that batch had half written.
"""

from __future__ import annotations

import logging
import os

from hybrid_infer.errors import InputError

log = logging.getLogger(__name__)

#: binaryFile's schema: a streaming source must be given it (Spark does not infer it).
BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"


def read_image_stream(spark, path: str, *, glob: str | None = None,
                      max_files_per_trigger: int | None = None):
    """Streaming DataFrame(path, content) of the files that appear under `path` (every
    file, or those `glob`, Spark's pathGlobFilter, matches; one that is not an image gets
    its `error`)."""
    if "://" not in path and not os.path.isdir(path):
        raise InputError(f"stream input {path!r} is not a directory: pass the folder that "
                         "new image files arrive in (--input)")
    reader = (spark.readStream.format("binaryFile").schema(BINARY_FILE_SCHEMA)
              .option("recursiveFileLookup", "true"))
    if glob:
        reader = reader.option("pathGlobFilter", glob)
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", int(max_files_per_trigger))
    return reader.load(path).select("path", "content")


def start_stream(spark, *, input_path: str, output_path: str, checkpoint: str,
                 trigger_seconds: float | None = None, available_now: bool = False,
                 max_files_per_trigger: int | None = None, **infer_options):
    """Start the streaming job; returns Spark's StreamingQuery.

    infer_options: as for hybrid_infer.infer (model, mode, pool, top_k, ...), except
    fail_fast, which a stream cannot honour without stopping on the first bad file.
    trigger_seconds: a micro-batch every N seconds (default: as soon as files arrive);
    available_now: process the files present now, then stop.
    """
    from hybrid_infer.api import infer

    if infer_options.get("fail_fast"):
        raise InputError("fail_fast stops a job on its first bad row, which a stream never "
                         "finishes: stream without it and read the `error` column")
    if os.path.abspath(output_path) == os.path.abspath(input_path):
        raise InputError("the stream's output must not be its input folder: pass another "
                         "--output")
    frames = read_image_stream(spark, input_path, max_files_per_trigger=max_files_per_trigger)
    predictions = infer(frames, **infer_options)
    writer = (predictions.writeStream.format("parquet").outputMode("append")
              .option("path", output_path).option("checkpointLocation", checkpoint)
              .queryName(f"hybrid-infer stream {os.path.basename(os.path.normpath(input_path))}"))
    if available_now:
        writer = writer.trigger(availableNow=True)
    elif trigger_seconds:
        writer = writer.trigger(processingTime=f"{trigger_seconds} seconds")
    query = writer.start()
    log.info("stream %s -> %s started (checkpoint %s)", input_path, output_path, checkpoint)
    return query


def describe_progress(progress: dict) -> str | None:
    """One line for a finished micro-batch, from StreamingQuery.lastProgress."""
    if not progress:
        return None
    rows = progress.get("numInputRows", 0)
    rate = progress.get("processedRowsPerSecond") or 0.0
    return f"batch {progress.get('batchId')}: {rows} files, {rate:.1f} images/s"
