"""``python -m adt.prepare``: train and evaluate a profile's runs in worker processes (:mod:`adt.artifact.prepare`)."""

import sys

from adt.artifact.prepare import main

if __name__ == "__main__":
    sys.exit(main())
