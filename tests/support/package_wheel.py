"""The package's wheel, built the way scripts/build_images.sh builds it (`pip wheel
--no-deps`), from a copy of the sources (an in-tree build would leave build/ behind)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from paths import REPO


def build_wheel(directory) -> str:
    """Build the wheel under `directory` (a pathlib.Path); returns its path."""
    source = directory / "src"
    shutil.copytree(os.path.join(REPO, "hybrid_infer"), source / "hybrid_infer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in os.listdir(REPO):
        if name in ("pyproject.toml", "README.md") or name.startswith("LICENSE"):
            shutil.copy(os.path.join(REPO, name), source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-w", str(directory / "dist"), str(source)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = (directory / "dist").glob("*.whl")
    return str(wheel)
