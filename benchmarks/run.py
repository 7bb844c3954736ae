"""Benchmark every mode side by side: `python benchmarks/run.py --help`.

A thin entry point for a source checkout; the benchmark itself is the package
hybrid_infer.bench (also `hybrid-infer bench` from an installed wheel). Results go to
benchmarks/results/ unless --out says otherwise.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's hybrid_infer

from hybrid_infer.bench.harness import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(command="python benchmarks/run.py",
                  out_default=os.path.join(HERE, "results")))
