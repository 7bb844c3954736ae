"""Where a job writes: never over its input, never over data the engine did not write.

Checked before anything starts (Spark, Ray, the pool), so a bad --output costs seconds:

- the output must not be the input, inside it, or contain it;
- an existing output is replaced only when it is the engine's own earlier output (it
  holds the marker file this module writes, or only Spark's Parquet files) or the user
  passed overwrite=True (`--overwrite`);
- the output's folder must be writable (a probe file is created and removed).

Local paths (no scheme, or file:) are checked with the OS. Other filesystems (s3a://,
hdfs://, ...) are checked through the Spark session's Hadoop FileSystem; a Spark Connect
session has no JVM in this process to ask, so there Spark itself lists the output (its
binaryFile source) and writes the marker (a one-line `_HYBRID_INFER` text folder).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time

from hybrid_infer.errors import OutputError

log = logging.getLogger(__name__)

#: Written into every output folder the engine completes: marks it as the engine's own.
MARKER = "_HYBRID_INFER"

# What Spark leaves in a Parquet output folder: the parts, _SUCCESS, and their .crc twins.
_SPARK_FILE = re.compile(r"^\.?(part-.*\.parquet|_SUCCESS|_committed_.*|_started_.*)(\.crc)?$")


def is_local(path: str) -> bool:
    return path.startswith("file:") or "://" not in path


def local_path(path: str) -> str:
    """An absolute local path with symlinks resolved (for a file: URI or a plain path)."""
    if path.startswith("file:"):
        path = re.sub(r"^file:(//)?", "", path)
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def check_not_input(input_path: str, output_path: str, *, qualify=None) -> None:
    """Refuse an output equal to the input, inside it, or containing it."""
    qualify = qualify or local_path
    source, target = qualify(input_path), qualify(output_path)
    if _inside(target, source):
        where = "is the input" if target == source else "is inside the input"
        raise OutputError(f"--output {output_path!r} {where} {input_path!r}: writing there "
                          "would replace the input; choose an output outside it")
    if _inside(source, target):
        raise OutputError(f"--output {output_path!r} contains the input {input_path!r}: "
                          "writing there would delete the input; choose another output")


def is_engine_output(names: list[str]) -> bool:
    """True for a folder the engine wrote: its marker, or nothing but Spark's Parquet files."""
    return MARKER in names or all(_SPARK_FILE.match(name) for name in names)


def _refuse_existing(output_path: str, what: str) -> None:
    raise OutputError(f"--output {output_path!r} already exists and {what}: it would be "
                      "replaced. Choose a new output path, or pass --overwrite to replace it")


def check_output(input_path: str | None, output_path: str, *, overwrite: bool = False,
                 spark=None) -> None:
    """Every check above, for a local path or (with `spark`) any Hadoop filesystem."""
    if not is_local(output_path):
        if spark is not None:
            _check_hadoop_output(spark, input_path, output_path, overwrite)
        return
    if input_path is not None and is_local(input_path):
        check_not_input(input_path, output_path)
    target = local_path(output_path)
    if os.path.isdir(target):
        if not overwrite and not is_engine_output(os.listdir(target)):
            _refuse_existing(output_path, "holds files the engine did not write")
    elif os.path.lexists(target) and not overwrite:
        _refuse_existing(output_path, "is a file, not an earlier output of the engine")
    _probe_writable(output_path, target)


def _probe_writable(output_path: str, target: str) -> None:
    """Create and remove a file where the output will go: fail now, not after inference."""
    home = target if os.path.isdir(target) else os.path.dirname(target)
    folder = home
    missing = []
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    where = folder
    try:
        for created in reversed(missing):
            where = created
            os.mkdir(created)
        where = home
        fd, probe = tempfile.mkstemp(prefix=".hybrid-infer-probe-", dir=home)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write the output {output_path!r}: "
                          f"{exc.strerror or exc} (in {where})") from None
    finally:
        for created in missing:  # leave no empty folders behind
            try:
                os.rmdir(created)
            except OSError:
                pass


def _check_hadoop_output(spark, input_path, output_path, overwrite) -> None:
    from hybrid_infer.runtime import is_connect

    if is_connect(spark):
        _check_output_through_spark(spark, input_path, output_path, overwrite)
        return
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()

    def qualify(path: str) -> str:
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        return str(hpath.getFileSystem(conf).makeQualified(hpath).toString())

    if input_path is not None:
        check_not_input(input_path, output_path, qualify=qualify)
    hpath = jvm.org.apache.hadoop.fs.Path(output_path)
    fs = hpath.getFileSystem(conf)
    if fs.exists(hpath) and not overwrite:
        if not fs.getFileStatus(hpath).isDirectory():
            _refuse_existing(output_path, "is a file, not an earlier output of the engine")
        names = [str(s.getPath().getName()) for s in fs.listStatus(hpath)]
        if not is_engine_output(names):
            _refuse_existing(output_path, "holds files the engine did not write")


def _check_output_through_spark(spark, input_path, output_path, overwrite) -> None:
    """The Hadoop checks for a Spark Connect session: the server lists the output."""
    if input_path is not None:
        check_not_input(input_path, output_path, qualify=lambda path: path.rstrip("/"))
    if overwrite:
        return
    try:
        paths = [row.path for row in spark.read.format("binaryFile")
                 .option("recursiveFileLookup", "true").load(output_path)
                 .select("path").collect()]
    except Exception as exc:  # noqa: BLE001 - Connect raises its own AnalysisException
        if "PATH_NOT_FOUND" in str(exc):
            return  # nothing there to protect
        raise OutputError(f"cannot check the output {output_path!r}: "
                          f"{str(exc).splitlines()[0][:300]}") from None
    names = [path.rstrip("/").rsplit("/", 1)[-1] for path in paths]
    if not is_engine_output(names):
        _refuse_existing(output_path, "holds files the engine did not write")


def write_marker(output_path: str, *, input_path: str, spark=None) -> None:
    """Mark a completed output folder as the engine's own (so a rerun may replace it)."""
    from hybrid_infer import __version__

    body = json.dumps({"written_by": f"hybrid-infer {__version__}", "input": input_path,
                       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if is_local(output_path):
        with open(os.path.join(local_path(output_path), MARKER), "w") as handle:
            handle.write(body + "\n")
    elif spark is not None:
        from hybrid_infer.runtime import is_connect

        if is_connect(spark):  # no JVM here: a one-line text dataset named like the marker
            (spark.createDataFrame([(body,)], "value string").coalesce(1).write
             .mode("overwrite").text(output_path.rstrip("/") + "/" + MARKER))
            return
        jvm = spark.sparkContext._jvm
        hpath = jvm.org.apache.hadoop.fs.Path(output_path.rstrip("/") + "/" + MARKER)
        stream = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).create(hpath, True)
        try:
            stream.write(bytearray((body + "\n").encode()))
        finally:
            stream.close()


def output_exists(output_path: str) -> bool:
    return is_local(output_path) and os.path.lexists(local_path(output_path))


def remove_failed_output(output_path: str) -> None:
    """After a failed write, remove a local output folder the job created, if it holds
    nothing but Spark's files (a full disk otherwise leaves an empty output behind)."""
    if not is_local(output_path):
        return
    target = local_path(output_path)
    if os.path.isdir(target) and all(_SPARK_FILE.match(n) or n == "_temporary"
                                     for n in os.listdir(target)):
        shutil.rmtree(target, ignore_errors=True)


def write_failure(exc: BaseException, output_path: str) -> OutputError:
    """One line for a failed Spark job: the innermost Java cause, no trace."""
    text = str(exc)
    causes = re.findall(r"Caused by: ([^\n]+)", text)
    line = causes[-1] if causes else next((ln for ln in text.splitlines() if ln.strip()), repr(exc))
    line = re.sub(r"^(java|org|scala)\.[\w.$]+(Exception|Error): ", "", line.strip())
    return OutputError(f"the Spark job writing {output_path!r} failed: {line[:300]}")
