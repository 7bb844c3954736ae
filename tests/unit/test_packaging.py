"""Issues 13 and 21: installable beside an existing stack, on Spark 4 or Spark 3.5.

pyproject.toml declares ranges (no `==`); each lane's constraints file pins one tested
point inside them (constraints-spark4.txt, constraints.txt for Spark 3.5);
scripts/install.sh LANE installs with it; raydp is an extra whose absence is named, and
which on Spark 4 fails at once naming the Spark 3.5 lane.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lanes import LANES, constraints, this_lane
from paths import REPO as ROOT


def project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)


def requirements(extras=True) -> list[Requirement]:
    """The base dependencies, and those of `extras` (True: every extra)."""
    meta = project()["project"]
    found = [Requirement(r) for r in meta["dependencies"]]
    groups = meta["optional-dependencies"]
    for group in (groups if extras is True else extras or ()):
        found += [Requirement(r) for r in groups[group]]
    return found


def test_dependencies_are_ranges_not_pins():
    for requirement in requirements():
        operators = {spec.operator for spec in requirement.specifier}
        assert "==" not in operators and "===" not in operators, str(requirement)
        assert any(op in (">=", ">", "~=") for op in operators), f"{requirement}: no lower bound"
        assert any(op in ("<", "<=", "~=") for op in operators), f"{requirement}: no upper bound"


@pytest.mark.parametrize("lane", sorted(LANES))
def test_each_lanes_constraints_pin_a_tested_point_inside_every_range(lane):
    pins = constraints(lane)
    for requirement in requirements(LANES[lane][1]):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in {LANES[lane][0]}"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            (str(requirement), pins[name])
    assert "hybrid-infer" not in pins


def test_the_lanes_are_the_two_spark_lines():
    spark4, spark35 = constraints("spark4"), constraints("spark35")
    assert spark4["pyspark"].startswith("4.") and spark35["pyspark"].startswith("3.5.")
    assert spark4["numpy"].startswith("2.") and spark35["numpy"].startswith("1.")
    assert int(spark4["pyarrow"].split(".")[0]) >= 20
    assert spark4["pandas"].startswith("2.")  # PySpark 4.2+ warns that pandas 3 is not fully supported
    assert "raydp" in spark35 and "raydp" not in spark4  # no RayDP release for Spark 4
    assert spark4["ray"] == spark35["ray"] and spark4["torch"] == spark35["torch"]


def test_this_environment_is_the_constrained_one():
    """What the tests run on is what this lane's constraints say (install.sh checks it too).
    Read from the environment's site-packages, as pip does: Ray puts its own vendored
    copies (ray/thirdparty_files) on sys.path once imported."""
    import sysconfig
    from importlib.metadata import distributions

    site = sysconfig.get_paths()["purelib"]
    installed = {canonicalize_name(d.metadata["Name"]): d.version
                 for d in distributions(path=[site])}
    wrong = {name: (installed.get(name), pinned) for name, pinned in constraints().items()
             if installed.get(name) != pinned}
    assert not wrong, wrong


def test_raydp_is_an_extra_and_torch_is_the_users_choice():
    meta = project()["project"]
    base = {canonicalize_name(r.name) for r in requirements(extras=False)}
    assert "raydp" not in base
    assert [Requirement(r).name for r in meta["optional-dependencies"]["raydp"]] == ["raydp"]
    torch = next(r for r in requirements(extras=False) if r.name == "torch")
    assert not torch.url and len(torch.specifier) == 2  # a range, any build (CPU or CUDA)
    with open(os.path.join(ROOT, "scripts", "install.sh")) as handle:
        script = handle.read()
    assert re.search(r'spark35\) +constraints=constraints\.txt; +extras=[\w,]*raydp', script)
    assert re.search(r'-c "\$constraints" -e "\.\[\$extras\]"', script)


def test_the_raydp_mode_on_spark_4_fails_at_once_naming_the_spark_35_lane():
    """Before any work (no Ray, no RayDP session): RayDP has no Spark 4 release."""
    if this_lane() != "spark4":
        pytest.skip("this environment is the Spark 3.5 lane, where the raydp mode runs "
                    "(tests/integration/test_raydp_mode.py)")
    code = ("from hybrid_infer.runtime import start_raydp_spark\n"
            "try:\n    start_raydp_spark()\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ConfigurationError"), done.stdout
    assert "Spark 3.5" in done.stdout and "scripts/install.sh spark35" in done.stdout


def test_license_setuptools_and_classifiers():
    data = project()
    assert data["build-system"]["requires"] == ["setuptools>=77"]  # SPDX license string
    assert data["project"]["license"] == "Apache-2.0"
    with open(os.path.join(ROOT, "LICENSE")) as handle:
        text = handle.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert any(c.startswith("Programming Language :: Python :: 3.11")
               for c in data["project"]["classifiers"])


def test_raydp_mode_without_raydp_names_the_extra(tmp_path):
    """A process where `import raydp` fails gets a message naming hybrid-infer[raydp]."""
    (tmp_path / "raydp.py").write_text("raise ImportError('No module named raydp')\n")
    code = ("from hybrid_infer.runtime import start_raydp_spark\n"
            "try:\n    start_raydp_spark()\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ConfigurationError"), done.stdout
    assert "pip install 'hybrid-infer[raydp]'" in done.stdout


TEST_COMMAND = "bash scripts/install.sh && .venv/bin/python -m pytest -q -rs -n 2 --dist loadgroup"


@pytest.mark.parametrize("command", ["bash scripts/install.sh && .venv/bin/hybrid-infer demo",
                                     TEST_COMMAND])
def test_readme_keeps_its_two_commands(command):
    with open(os.path.join(ROOT, "README.md")) as handle:
        assert command in handle.read()
    with open(os.path.join(ROOT, ".ci", "run")) as handle:
        ci = handle.read()
    assert TEST_COMMAND in ci


def test_spark_4_is_the_default_lane_and_spark_35_installs_beside_it():
    """README's plain install is the Spark 4 lane in .venv/; the 3.5 lane's command
    installs into .venv-spark35/ and runs -m core (the raydp mode among it)."""
    with open(os.path.join(ROOT, "scripts", "install.sh")) as handle:
        script = handle.read()
    assert re.search(r"^DEFAULT_LANE=spark4$", script, flags=re.M)
    assert 'venv=${VENV:-.venv-$lane}' in script  # the other lane: .venv-spark35/
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    assert ("bash scripts/install.sh spark35 && .venv-spark35/bin/python -m pytest -q -rs "
            "-m core -n 2 --dist loadgroup" in readme)
    assert "| `spark4` (default) | `bash scripts/install.sh` | `.venv/` |" in readme


def test_ci_runs_each_lanes_readme_test_command_exactly():
    """Every README command that installs a lane and runs tests is a line of .ci/run."""
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    commands = [line for line in re.findall(r"^bash scripts/install\.sh.*pytest.*$", readme,
                                            flags=re.M)]
    assert len(commands) == 2, commands  # the default lane, and the other one
    with open(os.path.join(ROOT, ".ci", "run")) as handle:
        ci_lines = handle.read().splitlines()
    for command in commands:
        assert command in ci_lines, command
