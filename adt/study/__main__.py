"""``python -m adt.study``: the budget study of the headline claims (:mod:`adt.artifact.study`)."""

import sys

from adt.artifact.study import main

if __name__ == "__main__":
    sys.exit(main())
