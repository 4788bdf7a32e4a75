"""``python -m adt.sweep``: every (method, seed) of a profile over GPUs (:mod:`adt.training.sweep`)."""

import sys

from adt.training.sweep import command_line

if __name__ == "__main__":
    sys.exit(command_line())
