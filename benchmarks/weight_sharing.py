"""One copy of the weights for N pool actors, or N: `python benchmarks/weight_sharing.py
--help`. A thin entry point; the script is hybrid_infer.bench.weight_sharing."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hybrid_infer.bench.weight_sharing import main  # noqa: E402

if __name__ == "__main__":
    main()
