"""``python -m adt.train``: train one run (:mod:`adt.training.loop`)."""

import sys

from adt.training.loop import command_line, train

__all__ = ["train", "command_line"]

if __name__ == "__main__":
    sys.exit(command_line())
