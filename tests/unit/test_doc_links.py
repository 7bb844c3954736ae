"""Every relative link of README.md, docs/*.md and benchmarks/README.md leads somewhere:
the file or folder it names exists, and an anchor (`file.md#heading`, `#heading`) is a
heading of that file, as GitHub names headings."""

import os

import pytest

from doc_blocks import DOC_FILES, anchor, anchors, relative_links
from paths import REPO


def test_the_documentation_files_exist():
    for path in DOC_FILES:
        assert os.path.isfile(os.path.join(REPO, path)), path
    assert {"docs/cli.md", "docs/api.md", "docs/operations.md", "docs/clusters.md",
            "docs/ARCHITECTURE.md"} <= set(DOC_FILES)


def test_anchors_are_named_as_github_names_them():
    assert anchor("`predict_batch_udf`: PySpark's function, on warm actors") == \
        "predict_batch_udf-pysparks-function-on-warm-actors"
    assert anchor("Spark Connect (Spark 4)") == "spark-connect-spark-4"
    assert anchor("GPU actors: decoding on the GPU (`--decode`)") == \
        "gpu-actors-decoding-on-the-gpu---decode"


@pytest.mark.parametrize("path", DOC_FILES)
def test_every_relative_link_resolves(path):
    links = relative_links(path)
    broken = []
    for number, target in links:
        file_part, _, fragment = target.partition("#")
        resolved = os.path.normpath(os.path.join(REPO, os.path.dirname(path), file_part)) \
            if file_part else os.path.join(REPO, path)
        where = f"{path}:{number}: ({target})"
        if not os.path.exists(resolved):
            broken.append(f"{where} names a path that does not exist")
        elif fragment and fragment not in anchors(os.path.relpath(resolved, REPO)):
            broken.append(f"{where} names no heading of {os.path.relpath(resolved, REPO)}")
    assert not broken, "\n".join(broken)


def test_readme_links_every_documentation_file():
    targets = {os.path.normpath(t.partition("#")[0]) for _, t in relative_links("README.md")}
    assert set(DOC_FILES) - {"README.md"} <= targets
