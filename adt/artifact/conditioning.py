"""Ledger row b's experiment, kept as a record: the amortised methods trained once more with
the other generator input, on every seed (chapter 3, section 3.4).

Its six extra runs cost about 11 minutes of a 2-core CPU at ``quick``, for an effect of about
80 points, so ``make reproduce`` does not train them: ``python -m adt.prepare --conditioning``
trains and evaluates them and writes :func:`record_path`. The record holds, per method and
seed, the variant run's fingerprint and its per-image correctness under white-box PGD, and
the fingerprints of the profile's own amortised runs it was made against. Chapter 3 pairs
the variants' correctness with its own tables as they are now, and uses the record only
while its own runs are those the record names (:func:`load_record`); otherwise the chapter
trains the variants itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adt.config.profiles import Profile
from adt.config.provenance import REPO_ROOT, git_commit
from adt.core.io import read_json
from adt.evaluation.stored import run_fingerprint
from adt.evaluation.table import RobustnessTable
from adt.training.runs import Run

__all__ = ["AM_METHODS", "conditioning_variant", "record_path", "make_record", "load_record",
           "variant_correct"]

#: The amortised methods, whose generators the conditioning feeds.
AM_METHODS = ("adt_exp_am", "adt_imp_am")
RECORD_FORMAT = 1


def conditioning_variant(profile: Profile) -> Profile:
    """``profile`` with the amortised generators fed the other input (ledger row b): the
    raw input gradients (the release's) where the profile normalises them, and the other
    way round."""
    other = "raw" if profile.methods.am_conditioning == "normalised" else "normalised"
    return profile.replace(methods={"am_conditioning": other})


def record_path(profile: Profile) -> Path:
    """``benchmarks/conditioning-<profile>.json`` in the repository."""
    return REPO_ROOT / "benchmarks" / f"conditioning-{profile.name}.json"


def _fingerprints(runs: Sequence[Run]) -> list[dict[str, Any]]:
    return sorted(map(run_fingerprint, runs), key=lambda f: (f["method"], f["seed"]))


def make_record(profile: Profile, own_runs: Sequence[Run], variant_runs: Sequence[Run],
                variant_tables: Sequence[RobustnessTable], column: str) -> dict[str, Any]:
    """The record of one conditioning experiment: the variants' per-image correctness under
    ``column``, with the fingerprints of the variant runs and of the ``own_runs`` (the
    profile's amortised runs) it is to be paired with."""
    import torch

    if len(variant_runs) != len(variant_tables):
        raise ValueError(f"{len(variant_runs)} variant runs and {len(variant_tables)} tables: "
                         "give one table per run")
    return {
        "format": RECORD_FORMAT, "profile": profile.name,
        "conditioning": conditioning_variant(profile).methods.am_conditioning,
        "column": column,
        "own_runs": _fingerprints(own_runs),
        "variants": [{"method": r.method, "seed": r.seed, "fingerprint": run_fingerprint(r),
                      "correct": "".join("1" if c else "0" for c in t.row(column).tolist())}
                     for r, t in zip(variant_runs, variant_tables, strict=True)],
        "recorded": {"command": f"python -m adt.prepare --profile {profile.name} --conditioning",
                     "commit": git_commit(), "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d", time.gmtime())},
    }


def load_record(profile: Profile, own_runs: Sequence[Run], column: str,
                path: Path | None = None) -> dict[str, Any] | None:
    """The stored record for ``profile``, or None when there is none or it was made against
    other runs than ``own_runs``, another profile or another ``column``."""
    path = path or record_path(profile)
    if not path.is_file():
        return None
    record = read_json(path, fix=f"rerun python -m adt.prepare --profile {profile.name} "
                                 "--conditioning, or restore it (git checkout -- FILE)")
    if (record.get("format") != RECORD_FORMAT or record.get("profile") != profile.name
            or record.get("column") != column or record.get("own_runs") != _fingerprints(own_runs)
            or record.get("conditioning")
            != conditioning_variant(profile).methods.am_conditioning):
        return None
    return record


def variant_correct(record: dict[str, Any], method: str, seeds: Sequence[int]) -> np.ndarray:
    """The variant's per-image correctness of ``method``, one row per seed of ``seeds``:
    shape (seeds, examples), to pair with :func:`adt.study.claims.per_example`."""
    by_seed = {v["seed"]: v["correct"] for v in record["variants"] if v["method"] == method}
    missing = [s for s in seeds if s not in by_seed]
    if missing:
        raise ValueError(f"the record has no {method} variant for seeds {missing}; rerun "
                         f"{record['recorded']['command']}")
    return np.array([[c == "1" for c in by_seed[s]] for s in seeds], dtype=bool)
