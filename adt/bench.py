"""``python -m adt.bench``: throughput benchmarks (:mod:`adt.artifact.bench`)."""

import sys

from adt.artifact.bench import main

if __name__ == "__main__":
    sys.exit(main())
