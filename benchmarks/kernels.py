"""DESIGN §5 kernel benchmark: ``python benchmarks/kernels.py --check --accuracy --speed``.

Same as ``gatedelta bench kernels``; see :mod:`gatedelta.bench.kernels`.
"""

import sys

from gatedelta.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main())
