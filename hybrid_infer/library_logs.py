"""Ray's and Spark's own log output in one file, for the `hybrid-infer` command.

Their warnings (Ray's token notice, Spark's NativeCodeLoader line, log4j's start-up
banner) say nothing a user of the command can act on, and they bury its progress and
summary; an operator chasing a failure still needs them. So the command writes them to
a log file its summary names, and `--verbose` leaves them on the console instead.

- Ray: the driver's "ray" logger writes to the file instead of stderr (swapped before
  ray.init, which keeps the handlers it finds). Ray's own processes log under its
  session folder as always (`ray logs`).
- Spark: the driver JVM's log4j2 writes to the same file. log4j2 reads its configuration
  when the JVM starts, so this holds for a Spark the command starts itself; a JVM that
  already runs (spark-submit) keeps its own logging.

A library user's process is not touched: only the command calls this.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import tempfile

#: Spark's records in the file, like its console format; WARN and above, as Spark's
#: own default for applications.
_LOG4J2_PROPERTIES = """\
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
"""


class LibraryLogs:
    """A log file for Ray's and Spark's output, in a new folder of the temp folder."""

    def __init__(self, folder: str | None = None):
        self.folder = folder or tempfile.mkdtemp(prefix="hybrid-infer-logs-")
        self.path = os.path.join(self.folder, "ray-spark.log")
        open(self.path, "a").close()

    def is_empty(self) -> bool:
        return os.path.getsize(self.path) == 0

    def remove(self) -> None:
        """For a command after which the file holds nothing worth keeping."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def route_ray(self) -> None:
        """The driver's "ray" logger writes to the file from now on, not to stderr."""
        import ray  # noqa: F401  (importing ray installs its stderr handler: replaced here)

        handler = logging.FileHandler(self.path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ray_logger = logging.getLogger("ray")
        for old in list(ray_logger.handlers):
            ray_logger.removeHandler(old)
        ray_logger.addHandler(handler)
        ray_logger.propagate = False

    def spark_conf(self) -> dict[str, str]:
        """Spark settings that send a new driver JVM's log4j2 records to the file."""
        config = pathlib.Path(self.folder, "log4j2.properties")
        config.write_text(_LOG4J2_PROPERTIES.format(path=self.path))
        return {"spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={config.as_uri()}"}
