"""DESIGN §5 kernel benchmark: ``python benchmarks/kernels.py accuracy speed decode check``.

Same as ``gatedelta bench kernels``; see :mod:`gatedelta.bench.kernels` for the steps.
"""

import sys

from gatedelta.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main())
