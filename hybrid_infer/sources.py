"""Spark inputs: a directory of image files (binaryFile) or a Parquet binary column.

Every file under an input folder comes back as a row: Spark's binaryFile source reads
the files; the rows it would drop (0-byte files) or cannot make (unreadable files) are
added here, each with its reason.

Both give a DataFrame with an identity column and a binary column, checked up front so
a wrong path or column fails here with a message, not deep inside a Spark job.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field

from hybrid_infer.decode import UNREADABLE_MARKER
from hybrid_infer.errors import InputError
from hybrid_infer.row_limits import DEFAULT_MAX_ROW_BYTES, check_limit, limit_file_rows

#: Spark's file sources skip names starting with these (_SUCCESS, .DS_Store, ...).
HIDDEN_PREFIXES = (".", "_")



@dataclass
class InputListing:
    """What an input path held, and what became of each file."""

    #: Files that come back as rows (Spark's reads plus rows made for 0-byte and
    #: unreadable files), one row each.
    files: int = 0
    #: 0-byte files (Spark's file source drops them): rows with "empty value (0 bytes)".
    empty: list = field(default_factory=list)
    #: file -> why it cannot be read: rows with that reason as their error.
    unreadable: dict = field(default_factory=dict)
    #: Skipped, as Spark skips them: names (or folders) starting with "." or "_".
    hidden: list = field(default_factory=list)
    #: Skipped: excluded by the caller's own filter (glob).
    excluded: int = 0
    glob: str | None = None

    def skipped_lines(self) -> list[str]:
        lines = []
        if self.hidden:
            lines.append(f"{len(self.hidden)} hidden files skipped (names starting with '.' "
                         f"or '_', as Spark skips them), e.g. {self.hidden[0]}")
        if self.excluded:
            lines.append(f"{self.excluded} files excluded by the filter {self.glob!r}")
        return lines


def read_images(spark, path: str, *, glob: str | None = None, recursive: bool = True,
                max_row_bytes: int = DEFAULT_MAX_ROW_BYTES):
    """DataFrame(path string, content binary): one row for every file under `path`.

    Every file comes back exactly once, whatever its extension (or none): one that is
    not an image gets its `error` when decoded. 0-byte files, which Spark's binaryFile
    source drops, come back with empty content ("empty value (0 bytes)"), and files
    that cannot be read (a broken symbolic link, a FIFO, no permission) with their
    reason. glob: your own filter on file names (Spark's pathGlobFilter, e.g.
    "*.{jpg,JPG}"): files it excludes are not rows. Hidden files (names starting with
    "." or "_") are skipped, as Spark skips them. recursive: include sub-folders.
    max_row_bytes: a file larger than this is never read: its row gets "value too
    large: ..." as its error (row_limits.py).
    """
    return read_images_listed(spark, path, glob=glob, recursive=recursive,
                              max_row_bytes=max_row_bytes)[0]


def read_images_listed(spark, path: str, *, glob: str | None = None, recursive: bool = True,
                       max_row_bytes: int = DEFAULT_MAX_ROW_BYTES):
    """read_images, and the InputListing saying what happened to each file."""
    check_limit(max_row_bytes)
    if "://" not in path and not os.path.exists(path) and not os.path.islink(path):
        raise InputError(f"input path {path!r} does not exist: pass a directory of images "
                         "or a Parquet dataset (--input)")
    reader = (spark.read.format("binaryFile")
              .option("recursiveFileLookup", str(recursive).lower()))
    if glob:
        reader = reader.option("pathGlobFilter", glob)
    local = "://" not in path and not path.startswith("file:")
    listing = InputListing(glob=glob)
    if local and not os.path.isdir(path) and _unreadable_reason(path):  # one bad file
        reason = _unreadable_reason(path)
        listing.unreadable[_file_uri(path)] = reason
        listing.files = 1
        return _made_rows(spark, [(_file_uri(path), reason)]), listing
    files = reader.load(path)
    seen = {_path_column(uri) for uri in files.inputFiles()}
    if local:
        extra = _local_extra_rows(path, seen, listing, glob, recursive)
        if listing.unreadable:  # no permission: Spark's read skips them, we add the rows
            files = reader.option("ignoreCorruptFiles", "true").load(path)
    else:  # Spark drops 0-byte files when it plans the scan: they are the difference
        non_empty = {row.path for row in files.select("path").collect()}
        listing.empty = sorted(seen - non_empty)
        listing.files = len(seen)
        extra = [(uri, None) for uri in listing.empty]
    frame = limit_file_rows(files, max_row_bytes)
    if listing.unreadable:  # their rows are made here: not also as oversized (never read)
        from pyspark.sql import functions as F

        frame = frame.where(~F.col("path").isin(list(listing.unreadable)))
    return (frame.unionByName(_made_rows(spark, extra)) if extra else frame), listing


def _made_rows(spark, rows):
    """Rows for files Spark does not return: (path, None) for empty, else the reason."""
    data = [(uri, b"" if reason is None else UNREADABLE_MARKER + reason.encode("utf-8"))
            for uri, reason in rows]
    return spark.createDataFrame(data, "path string, content binary")


def _file_uri(path: str) -> str:
    """A local path as Spark's binaryFile writes it in `path` (file:/abs/path)."""
    return "file:" + os.path.abspath(path)


def _path_column(uri: str) -> str:
    """DataFrame.inputFiles()'s URI (file:///a%20b) as binaryFile's path (file:/a b)."""
    from urllib.parse import unquote

    uri = unquote(uri)
    return "file:/" + uri[len("file:///"):] if uri.startswith("file:///") else uri


def _local_extra_rows(root: str, seen: set, listing: InputListing, glob, recursive) -> list:
    extra = []
    for file_path, relative in _walk(root, recursive):
        uri = _file_uri(file_path)
        if any(part.startswith(HIDDEN_PREFIXES) for part in relative.split(os.sep)):
            listing.hidden.append(file_path)
            continue
        if glob and not glob_matches(glob, os.path.basename(file_path)):
            listing.excluded += 1
            continue
        listing.files += 1
        reason = _unreadable_reason(file_path)
        if reason is not None:
            listing.unreadable[uri] = reason
            extra.append((uri, reason))
        elif os.path.getsize(file_path) == 0:
            listing.empty.append(uri)
            extra.append((uri, None))
    listing.hidden.sort()
    return extra


def _walk(root: str, recursive: bool):
    """(path, path relative to root) of every non-directory entry: files, links, FIFOs."""
    if not os.path.isdir(root):
        yield root, os.path.basename(root)
        return
    for folder, dirs, names in os.walk(root, followlinks=True):  # as Hadoop's listing
        dirs.sort()
        for name in sorted(names):  # broken links are among the names
            full = os.path.join(folder, name)
            yield full, os.path.relpath(full, root)
        if not recursive:
            break


def _unreadable_reason(path: str) -> str | None:
    """Why a local file cannot be read as bytes, or None when it can."""
    import stat

    if os.path.islink(path) and not os.path.exists(path):
        return f"broken symbolic link (its target {os.readlink(path)!r} is missing)"
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot stat the file: {exc.strerror}"
    if not stat.S_ISREG(mode):
        kind = ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
                else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")
        return f"not a regular file ({kind})"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def glob_matches(pattern: str, name: str) -> bool:
    """Hadoop's glob on a file name, as pathGlobFilter applies it: * ? [...] {a,b}."""
    return any(fnmatch.fnmatchcase(name, option) for option in _expand_braces(pattern))


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [expanded for option in match.group(1).split(",")
            for expanded in _expand_braces(head + option + tail)]


def read_parquet(spark, path: str, *, column: str = "content"):
    """The Parquet dataset at `path`; `column` must be binary."""
    if "://" not in path and not os.path.exists(path):
        raise InputError(f"input path {path!r} does not exist: pass a Parquet file or "
                         "directory (--input)")
    df = spark.read.parquet(path)
    check_binary_column(df, column)
    return df


def read_input(spark, path: str, *, column: str = "content",
               max_row_bytes: int = DEFAULT_MAX_ROW_BYTES):
    """Pick the reader: Parquet for .parquet files or directories holding them.

    max_row_bytes: for a folder of images, files over it are never read (a Parquet
    column's values are checked by infer(), in the JVM, before they reach Python)."""
    return read_input_listed(spark, path, column=column, max_row_bytes=max_row_bytes)[0]


def read_input_listed(spark, path: str, *, column: str = "content",
                      max_row_bytes: int = DEFAULT_MAX_ROW_BYTES):
    """read_input, and for a folder of images its InputListing (None for Parquet)."""
    if is_parquet(path):
        return read_parquet(spark, path, column=column), None
    return read_images_listed(spark, path, max_row_bytes=max_row_bytes)


def is_parquet(path: str) -> bool:
    if path.endswith(".parquet"):
        return True
    if os.path.isdir(path):
        return any(name.endswith(".parquet") for name in os.listdir(path))
    return False


def check_binary_column(df, column: str) -> None:
    from pyspark.sql.types import BinaryType

    fields = {f.name: f.dataType for f in df.schema.fields}
    if column not in fields:
        raise InputError(f"column {column!r} not found; the input has columns "
                         f"{sorted(fields)}: choose the binary column with --input-col")
    if not isinstance(fields[column], BinaryType):
        raise InputError(f"column {column!r} is {fields[column].simpleString()}, not binary: "
                         "choose a column of image bytes with --input-col")
