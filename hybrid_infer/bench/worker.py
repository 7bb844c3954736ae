"""One contender, in its own process: `python -m hybrid_infer.bench.worker CONFIG.json`.

The harness starts this once per contender so that every contender gets a fresh
interpreter, its own Spark JVM / Ray head, and a process tree whose memory is measured
alone. The config (a ContenderConfig) names the contender's module, the images, the
model and the jobs; this writes `result.json` (timings per job run) and the contender
writes `logits.npz` (the main job's rows and logits, checked across contenders before
any figure is printed).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

from hybrid_infer.bench.config import ContenderConfig


def module_name(runner: str) -> str:
    """A bare name is a module of hybrid_infer.bench.contenders; a dotted one is taken
    as given (tests add their own contenders this way)."""
    return runner if "." in runner else f"hybrid_infer.bench.contenders.{runner}"


def main(config_path: str) -> None:
    config = ContenderConfig.load(config_path)
    os.makedirs(config.stamp_dir, exist_ok=True)
    started = time.time()
    result = importlib.import_module(module_name(config.runner)).run(config)
    result.update({"contender": config.name, "total_s": round(time.time() - started, 2)})
    with open(os.path.join(config.work_dir, "result.json"), "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
