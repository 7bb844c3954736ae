"""The documentation whose examples are tests, read as fenced blocks and links.

DOC_FILES are README.md, docs/*.md and benchmarks/README.md (paths relative to the
repository). A fenced block may carry an annotation, an HTML comment on the line just
before its fence: `<!-- test: key=value ... -->` (tests/e2e/test_readme.py says which
keys). Headings and links are read the way GitHub renders them, so that a relative link
`[text](file.md#anchor)` can be checked against the headings of the file it names.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from dataclasses import dataclass, field

from paths import REPO

README = "README.md"


def doc_files() -> list[str]:
    """README.md, then docs/*.md in name order, then benchmarks/README.md."""
    docs = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
    return [README, *docs, os.path.join("benchmarks", "README.md")]


DOC_FILES = doc_files()


@dataclass
class Block:
    path: str  # the file, relative to the repository
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    heading: str
    options: dict = field(default_factory=dict)
    annotation_line: int | None = None

    @property
    def label(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{self.path}:L{self.line}-{self.lang}-{slug}"


def parse_annotation(text: str) -> dict:
    options = {}
    for token in shlex.split(text):
        key, _, value = token.partition("=")
        options[key] = value if _ else True
    return options


def read_lines(path: str) -> list[str]:
    with open(os.path.join(REPO, path)) as handle:
        return handle.read().splitlines()


def doc_blocks(path: str = README) -> list[Block]:
    """Every fenced block of one file (fences at the start of a line), in file order."""
    lines = read_lines(path)
    blocks, heading, index = [], "", 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence:
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            block = Block(path, index + 1, fence.group(1),
                          "\n".join(lines[index + 1:end]) + "\n", heading)
            previous = index - 1
            annotation = re.match(r"^<!--\s*test:(.*?)-->\s*$", lines[previous]) \
                if previous >= 0 else None
            if annotation:
                block.options = parse_annotation(annotation.group(1))
                block.annotation_line = previous + 1
            blocks.append(block)
            index = end
        index += 1
    return blocks


# -- headings and links, as GitHub renders them -------------------------------------------
def prose_lines(path: str) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced blocks (indented fences too)."""
    found, fenced = [], False
    for number, line in enumerate(read_lines(path), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            found.append((number, line))
    return found


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation dropped (`_` and `-`
    kept), spaces to hyphens."""
    text = heading.strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: str) -> set[str]:
    """The anchors of a file's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    for _, line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = anchor(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        if count:
            seen.setdefault(f"{base}-{count}", 1)
    return set(seen)


def relative_links(path: str) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link in a file's prose that names no
    scheme (http:, https:, mailto:): a file, a folder, an anchor or both."""
    found = []
    for number, line in prose_lines(path):
        line = re.sub(r"`[^`]*`", "", line)  # code may hold brackets; a link's text may be code
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                found.append((number, target))
    return found
