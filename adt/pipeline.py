"""``python -m adt.pipeline``: regenerate every table and figure with papermill (:mod:`adt.artifact.pipeline`)."""

import sys

from adt.artifact.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
