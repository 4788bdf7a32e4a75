"""``python -m adt.tune``: the quick recipe chosen on held-out training images (:mod:`adt.study.tune`)."""

import sys

from adt.study.tune import main

if __name__ == "__main__":
    sys.exit(main())
