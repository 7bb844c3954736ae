"""The two tested lanes (README, "Install"): which one this interpreter is, and each
lane's exact versions (its constraints file)."""

from __future__ import annotations

import os

from packaging.utils import canonicalize_name

from paths import REPO

#: lane -> (its constraints file, the extras scripts/install.sh installs on it)
LANES = {"spark4": ("constraints-spark4.txt", ("dev", "bench", "mlflow", "connect")),
         "spark35": ("constraints.txt", ("dev", "bench", "mlflow", "raydp"))}


def spark_major() -> int:
    import pyspark

    return int(pyspark.__version__.split(".")[0])


def this_lane() -> str:
    """The lane of the pyspark this interpreter imports."""
    return "spark4" if spark_major() >= 4 else "spark35"


def constraints(lane: str | None = None) -> dict[str, str]:
    """A lane's pins, canonical name -> version (default: this interpreter's lane)."""
    filename = LANES[lane or this_lane()][0]
    pins = {}
    with open(os.path.join(REPO, filename)) as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, pinned = line.partition("==")
                assert pinned, f"{filename}: {line!r} is not name==version"
                pins[canonicalize_name(name)] = pinned
    return pins
