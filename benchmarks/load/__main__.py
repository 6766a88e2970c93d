"""Entry point for ``python -m benchmarks.load``; the work lives in ``runner``."""

import sys

from benchmarks.load.runner import main

if __name__ == "__main__":
    sys.exit(main())
