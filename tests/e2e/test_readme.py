"""Every Python example and shell command of the documentation, run as a user would run it.

The blocks are read from the files themselves (fenced ```python and ```bash of README.md,
docs/*.md and benchmarks/README.md: doc_blocks.DOC_FILES), so the docs cannot drift from
the code. Each example is one test, named by its file and line; each runs once. Each
runs in a fresh subprocess with a clean environment
(the venv's bin first on PATH, HOME, JAVA_HOME if set, a private TMPDIR; nothing
RAY_*, no PYTHONPATH) in a scratch folder holding what the examples name: images/
(JPEGs from hybrid_infer.demo_data), resnet50.pt, labels.txt, mypkg/nets.py,
net.safetensors, model.pt, model.pt2, and links to the checkout's .venv and scripts/.
After a block, every process left in its session (a `ray start` head, a Spark JVM)
is killed; nothing else is touched.

A block may be annotated by an HTML comment on the line before its fence:

    <!-- test: skip reason="..." -->   not run here; reported as skipped with the reason
    <!-- test: setup=NAME -->          run SETUPS[NAME]'s code around the block (it
                                       defines what the block uses but does not make)
    <!-- test: given="COMMAND" -->     COMMAND (in the block) is taken as done: the
                                       tests run inside what it made (the installed venv)
    <!-- test: group=NAME -->          the blocks of one group (in one file) run in one
                                       process, in file order (consecutive examples of
                                       one section)
    <!-- test: lane=NAME -->           runs on that lane only (spark35: RayDP, which has
                                       no Spark 4 release), skipped on the other, saying
                                       so; it is in `-m core`, which that lane runs in CI

Any other key, or a skip without a reason, fails test_annotations_are_well_formed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap

import psutil
import pytest

from doc_blocks import DOC_FILES, README, Block, doc_blocks
from lanes import LANES, this_lane
from paths import REPO

VENV = os.path.dirname(os.path.dirname(sys.executable))
VENV_BIN = os.path.dirname(sys.executable)
BLOCK_TIMEOUT_S = 600
KEYS = {"skip", "reason", "setup", "given", "group", "lane"}

#: name -> (code before the block, code after it)
SETUPS = {
    # `df` (image bytes) and `tensors_df` (array<float>) on an embedded runtime
    "df": (textwrap.dedent("""
        import numpy as _np
        from hybrid_infer import read_images as _read_images, start_runtime as _start
        _runtime = _start()
        df = _read_images(_runtime.spark, "images/")
        tensors_df = _runtime.spark.createDataFrame(
            [(i, _np.random.default_rng(i).random(3 * 224 * 224).astype("float32").tolist())
             for i in range(2)], "id long, features array<float>")
        """), textwrap.dedent("""
        _runtime.__exit__(None, None, None)
        """)),
    # a local MLflow tracking store in which "my-model" has a version 3
    "mlflow": (textwrap.dedent("""
        import os as _os
        _os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        _os.environ["MLFLOW_TRACKING_URI"] = "file:" + _os.path.abspath("mlruns")
        import numpy as _np, torch as _torch, mlflow as _mlflow, mlflow.pytorch
        from mlflow.models import ModelSignature as _Signature
        from mlflow.types import Schema as _Schema, TensorSpec as _Tensor
        _net = _torch.nn.Linear(4, 2)
        _signature = _Signature(inputs=_Schema([_Tensor(_np.dtype(_np.float32), (-1, 4))]),
                                outputs=_Schema([_Tensor(_np.dtype(_np.float32), (-1, 2))]))
        with _mlflow.start_run():
            _logged = _mlflow.pytorch.log_model(
                _net, name="model", registered_model_name="my-model", serialization_format="pt2",
                signature=_signature, input_example=_np.zeros((2, 4), _np.float32))
        for _ in range(2):  # versions 2 and 3: the same model, registered again (no export)
            _mlflow.register_model(_logged.model_uri, "my-model")
        """), ""),
    # a folder that image files have arrived in (bash), and the stream's output checked
    "incoming": ("mkdir -p incoming && cp images/* incoming/\n",
                 "ls predictions/*.parquet >/dev/null\n"),
}


def readme_blocks(path: str = README) -> list[Block]:
    """README's blocks (or another documentation file's): what test_spark_connect reads."""
    return doc_blocks(path)


BLOCKS = [b for path in DOC_FILES for b in doc_blocks(path) if b.lang in ("python", "bash")]


@pytest.mark.parametrize("path", DOC_FILES)
def test_annotations_are_well_formed(path):
    text = open(os.path.join(REPO, path)).read().splitlines()
    annotated = {b.annotation_line for b in doc_blocks(path) if b.annotation_line}
    for number, line in enumerate(text, 1):
        if line.lstrip().startswith("<!-- test:"):  # prose may quote the convention
            assert number in annotated, f"{path}:{number}: an annotation must sit on " \
                                        "the line just before a fence"
    for block in doc_blocks(path):
        if not block.options:
            continue
        where = f"{path}:{block.annotation_line}"
        assert block.lang in ("python", "bash"), f"{where}: only python/bash blocks run"
        assert set(block.options) <= KEYS, f"{where}: unknown keys {set(block.options) - KEYS}"
        if "skip" in block.options:
            assert block.options.get("reason") not in (None, True, ""), \
                f"{where}: a skip needs reason=\"...\""
        if "setup" in block.options:
            assert block.options["setup"] in SETUPS, f"{where}: no setup {block.options}"
        if "given" in block.options:
            assert block.options["given"] in block.code, f"{where}: given text not in block"
        if "lane" in block.options:
            assert block.options["lane"] in LANES, f"{where}: no lane {block.options}"


def test_every_example_runs_once():
    """No example is shown, and so run, twice across the documentation files."""
    runnable = [b for b in BLOCKS if "skip" not in b.options]
    seen: dict[str, str] = {}
    for block in runnable:
        other = seen.setdefault(block.code.strip(), f"{block.path}:{block.line}")
        assert other == f"{block.path}:{block.line}", \
            f"{block.path}:{block.line} repeats the example at {other}"


def groups() -> list[list[Block]]:
    """Runnable units: one block, or every block of a group (at its first block)."""
    units, by_group = [], {}
    for block in BLOCKS:
        name = block.options.get("group")
        key = (block.path, name)  # a group lies within one file
        if name and key in by_group:
            by_group[key].append(block)
            continue
        unit = [block]
        if name:
            by_group[key] = unit
        units.append(unit)
    return units


UNITS = groups()


# -- the scratch folder the examples run in ---------------------------------------------
@pytest.fixture(scope="session")  # not module: the examples spread over xdist workers
def assets(tmp_path_factory):
    """What the examples name, made once (per worker)."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    from hybrid_infer.demo_data import generate_jpegs

    directory = tmp_path_factory.mktemp("readme_assets")
    generate_jpegs(str(directory / "images"), 4, seed=3, min_side=120, max_side=300)
    torch.save(torchvision.models.resnet50().state_dict(), directory / "resnet50.pt")
    # The pretrained weights the examples name, already in torch's hub cache (no
    # model hub is reachable here): random values under torchvision's own file names.
    for name in ("resnet18", "resnet50"):
        entry = torchvision.models.get_model_weights(name).DEFAULT
        cached = directory / "torch_home" / "hub" / "checkpoints" / os.path.basename(entry.url)
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.get_model(name).state_dict(), cached)
    (directory / "labels.txt").write_text("cat\ndog\nbird\n")
    (directory / "mypkg").mkdir()
    (directory / "mypkg" / "__init__.py").write_text("")
    (directory / "mypkg" / "nets.py").write_text(textwrap.dedent("""
        import torch

        def build(depth: int = 1) -> torch.nn.Module:
            layers = [torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()]
            for _ in range(depth - 1):
                layers += [torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU()]
            return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten(), torch.nn.Linear(8, 10))
        """))
    sys.path.insert(0, str(directory))
    try:
        from mypkg.nets import build
    finally:
        sys.path.remove(str(directory))
    net = build(depth=3).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(directory / "net.safetensors"))
    torch.jit.save(torch.jit.script(net), str(directory / "model.pt"))
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (torch.zeros(2, 3, 64, 64),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, str(directory / "model.pt2"))
    return directory


@pytest.fixture
def workdir(assets, tmp_path):
    import shutil

    for entry in os.listdir(assets):
        source = assets / entry
        if entry == "images":
            shutil.copytree(source, tmp_path / entry)  # a real folder, as a user's is
        else:
            os.symlink(source, tmp_path / entry)
    # what the commands name in a checkout; not the package itself, so that the
    # examples import the installed hybrid_infer, as a user's script would
    os.symlink(os.path.join(REPO, "scripts"), tmp_path / "scripts")
    os.symlink(VENV, tmp_path / ".venv")
    return tmp_path


def clean_env(tmpdir: str, torch_home: str | None = None) -> dict:
    """What a user's shell with the venv activated has: nothing exported by hand, and
    a torch cache that already holds the pretrained weights (TORCH_HOME, see assets)."""
    env = {"PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
           "VIRTUAL_ENV": VENV, "HOME": os.environ.get("HOME", "/tmp"),
           "LANG": "C.UTF-8", "TMPDIR": tmpdir}
    if torch_home:
        env["TORCH_HOME"] = torch_home
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    return env


def kill_session(sid: int) -> None:
    """Kill every process still in session `sid` (which the test created), e.g. the
    Ray head that `ray start` left running."""
    left = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid:
                process.send_signal(signal.SIGTERM)
                left.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    _, alive = psutil.wait_procs(left, timeout=10)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass


def script_for(unit: list[Block]) -> tuple[str, str]:
    """(language, script text) of a unit, setups and givens applied."""
    parts = []
    for block in unit:
        code = block.code
        given = block.options.get("given")
        if given:
            code = code.replace(given, "true" if block.lang == "bash" else "")
        before, after = SETUPS.get(block.options.get("setup"), ("", ""))
        if block.lang == "python":
            parts.append(f"print('== {block.path} line {block.line}', flush=True)\n"
                         f"{before}\n{code}\n{after}")
        else:
            parts.append(f"echo '== {block.path} line {block.line}'\n{before}{code}\n{after}")
    header = "set -euo pipefail\n" if unit[0].lang == "bash" else ""
    return unit[0].lang, header + "\n".join(parts)


def run_unit(unit: list[Block], directory) -> tuple[int | None, str]:
    lang, script = script_for(unit)
    stem = re.sub(r"[^A-Za-z0-9]+", "_", unit[0].path)
    path = directory / f"{stem}_L{unit[0].line}.{'py' if lang == 'python' else 'sh'}"
    path.write_text(script)
    command = [os.path.join(VENV_BIN, "python"), path.name] if lang == "python" \
        else ["bash", path.name]
    tmpdir = tempfile.mkdtemp(prefix="rdme", dir="/tmp")  # short: Ray's socket paths
    log_path = directory / "output.txt"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=directory, env=clean_env(tmpdir, str(directory / "torch_home")),
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            kill_session(process.pid)
    return code, log_path.read_text()


@pytest.mark.timeout(BLOCK_TIMEOUT_S + 120)
@pytest.mark.parametrize("unit", [
    pytest.param(u, id=u[0].label,
                 marks=[pytest.mark.core] if any("lane" in b.options for b in u) else [])
    for u in UNITS])
def test_readme_example(unit, workdir):
    skipped = [b for b in unit if "skip" in b.options]
    if skipped:
        block = skipped[0]
        pytest.skip(f"{block.path}:{block.line}: {block.options['reason']}")
    for block in unit:
        if block.options.get("lane", this_lane()) != this_lane():
            pytest.skip(f"{block.path}:{block.line} runs on the {block.options['lane']} lane "
                        f"(this is the {this_lane()} lane): that lane's -m core runs it")
    code, output = run_unit(unit, workdir)
    where = f"{unit[0].path} block(s) at line {', '.join(str(b.line) for b in unit)}"
    assert code is not None, (f"{where} still running after {BLOCK_TIMEOUT_S} s:\n"
                              f"{output[-4000:]}")
    assert code == 0, f"{where} exited {code}:\n{output[-4000:]}"


# -- the command lines the docs show, against the CLI's own --help -------------------------
def shown_cli_options() -> dict[tuple[str, ...], set[str]]:
    """(subcommand words) -> every --option the documentation shows with it, in any
    fenced block of any of its files."""
    shown: dict[tuple[str, ...], set[str]] = {}
    for block in (b for path in DOC_FILES for b in doc_blocks(path)):
        text = block.code.replace("\\\n", " ")
        if not block.lang:  # a synopsis: indented lines continue the command above
            text = re.sub(r"\n\s{2,}(?=\[|--)", " ", text)
        for match in re.finditer(r"hybrid-infer((?:\s+[a-z][a-z|]*)+)([^\n#]*)", text):
            words = match.group(1).split()
            command = tuple(w for w in words[:2] if "|" not in w)
            if not command or command[0] not in ("demo", "run", "pool", "bench"):
                continue  # prose, such as the layout's "hybrid-infer demo | run | ..."
            if command[0] == "pool":
                subs = words[1].split("|") if len(words) > 1 else []
                for sub in subs:
                    shown.setdefault(("pool", sub), set()).update(
                        re.findall(r"--[a-z][a-z-]*", match.group(2)))
                continue
            shown.setdefault(command[:1], set()).update(
                re.findall(r"--[a-z][a-z-]*", match.group(2)))
    return shown


def test_every_command_line_option_the_docs_show_exists():
    for command, options in sorted(shown_cli_options().items()):
        done = subprocess.run([sys.executable, "-m", "hybrid_infer.cli", *command, "--help"],
                              capture_output=True, text=True, timeout=120,
                              env=clean_env(tempfile.gettempdir()), cwd=REPO)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        missing = sorted(o for o in options if o not in done.stdout)
        assert not missing, f"the docs show `hybrid-infer {' '.join(command)}` with " \
                            f"{missing}, which its --help does not list"
