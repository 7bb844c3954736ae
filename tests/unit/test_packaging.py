"""Issue 13: installable beside an existing stack.

pyproject.toml declares ranges (no `==`), constraints.txt pins one tested point inside
them, scripts/install.sh installs with it, raydp is an extra whose absence is named.
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

from paths import REPO as ROOT


def project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)


def constraints() -> dict[str, str]:
    pins = {}
    with open(os.path.join(ROOT, "constraints.txt")) as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, pinned = line.partition("==")
                assert pinned, f"constraints.txt: {line!r} is not name==version"
                pins[canonicalize_name(name)] = pinned
    return pins


def requirements(extras=True) -> list[Requirement]:
    meta = project()["project"]
    found = [Requirement(r) for r in meta["dependencies"]]
    if extras:
        for group in meta["optional-dependencies"].values():
            found += [Requirement(r) for r in group]
    return found


def test_dependencies_are_ranges_not_pins():
    for requirement in requirements():
        operators = {spec.operator for spec in requirement.specifier}
        assert "==" not in operators and "===" not in operators, str(requirement)
        assert any(op in (">=", ">", "~=") for op in operators), f"{requirement}: no lower bound"
        assert any(op in ("<", "<=", "~=") for op in operators), f"{requirement}: no upper bound"


def test_constraints_pin_a_tested_point_inside_every_range():
    pins = constraints()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            (str(requirement), pins[name])
    assert "hybrid-infer" not in pins


def test_this_environment_is_the_constrained_one():
    """What the tests run on is what constraints.txt says (install.sh checks it too).
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
    assert re.search(r'-c constraints\.txt -e "\.\[[^\]]*raydp[^\]]*\]"', script)


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


@pytest.mark.parametrize("command", ["bash scripts/install.sh && .venv/bin/hybrid-infer demo",
                                     "bash scripts/install.sh && .venv/bin/python -m pytest -q -rs"])
def test_readme_keeps_its_two_commands(command):
    with open(os.path.join(ROOT, "README.md")) as handle:
        assert command in handle.read()
    with open(os.path.join(ROOT, ".ci", "run")) as handle:
        ci = handle.read()
    assert "bash scripts/install.sh && .venv/bin/python -m pytest -q -rs" in ci
