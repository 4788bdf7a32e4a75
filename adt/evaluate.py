"""``python -m adt.evaluate``: evaluate a checkpoint file under the protocol (:mod:`adt.evaluation.cli`)."""

import sys

from adt.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
