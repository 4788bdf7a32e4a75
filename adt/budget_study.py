"""``python -m adt.budget_study``: the budget study and the fair trial of the headline claims (:mod:`adt.study.campaign`)."""

import sys

from adt.study.campaign import main

if __name__ == "__main__":
    sys.exit(main())
