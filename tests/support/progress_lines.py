"""The progress lines `run` and `demo` print on stderr off a terminal."""

from __future__ import annotations

import re

PROGRESS_LINE = re.compile(r"^rows (\d+)/(\d+) \(\d+%\)  .* images/s  elapsed \S+  ETA \S+$")


def progress_rows(stderr: str, total: int) -> list[int]:
    """The rows done that each progress line says, in order (each out of `total`)."""
    rows = []
    for line in stderr.splitlines():
        found = PROGRESS_LINE.match(line)
        if found:
            assert int(found.group(2)) == total, line
            rows.append(int(found.group(1)))
    return rows
