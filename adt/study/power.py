"""How many seeds a paired claim needs: the budget study's design, fixed before its runs.

The seed is the unit of replication. A claim's evidence is the per-seed paired effect
d_s = A_rob(A, s) - A_rob(B, s), each on the same test images, and its interval is the
seed-level t-interval mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)
(:func:`adt.study.stats.seed_interval`). For an effect of ``effect`` points to be
decided, that half-width must fall below it:

    t_{0.975, n-1} * s / sqrt(n) <= effect,                                  (P1)

with s the per-seed standard deviation of the effect. s has two parts: the seeds'
(training) variance and the test images' sampling variance within a seed,

    s^2 = s_seed^2 + v_image / n_images,    v_image <= discordance,          (P2)

where discordance is the fraction of test images on which the two models disagree
(per-image correctness). (P2) says what more images per seed can buy: at most v_image /
n_images of the variance.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as _st

from adt.core._checks import check_int_at_least, check_positive

__all__ = ["half_width", "seeds_needed", "per_seed_a_rob_from_notebook", "paired_effects",
           "design", "power", "images_for_power"]


def half_width(sd: float, n_seeds: int, level: float = 0.95) -> float:
    """The seed-level t-interval's half-width with ``n_seeds`` seeds (P1, left side)."""
    n_seeds = check_int_at_least(n_seeds, 2, "n_seeds", "8")
    return float(_st.t.ppf(0.5 + level / 2, n_seeds - 1) * sd / math.sqrt(n_seeds))


def seeds_needed(sd: float, effect: float = 5.0, *, level: float = 0.95, minimum: int = 5,
                 maximum: int = 200) -> int:
    """The fewest seeds (at least ``minimum``) at which (P1) holds: a paired effect of
    ``effect`` (same units as ``sd``) has a ``level`` interval that excludes zero."""
    check_positive(effect, "effect", "5.0")
    for n in range(max(2, minimum), maximum + 1):
        if half_width(sd, n, level) <= effect:
            return n
    raise ValueError(f"sd={sd:.3g} needs more than maximum={maximum} seeds for an effect of "
                     f"{effect:g}; raise maximum or test a larger effect")


_A_ROB_LINE = re.compile(r"^(?P<model>.+?) seed (?P<seed>\d+): A_rob = (?P<value>[\d.]+)%")


def per_seed_a_rob_from_notebook(notebook: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """Per-seed A_rob (%) of each model as chapter 4 printed it ("AT (PGD) seed 1: A_rob =
    85.5% ..."), read from an executed notebook's outputs (nbformat JSON as a dict)."""
    found: dict[str, dict[int, float]] = {}
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            for line in "".join(output.get("text", [])).splitlines():
                match = _A_ROB_LINE.match(line.strip())
                if match:
                    found.setdefault(match["model"], {})[int(match["seed"])] = float(
                        match["value"])
    if not found:
        raise ValueError("no 'MODEL seed K: A_rob = X%' line in the notebook's outputs; pass "
                         "the executed notebooks/04_evaluation.ipynb")
    return found


def paired_effects(per_seed: Mapping[str, Mapping[int, float]], a: str, b: str
                   ) -> dict[int, float]:
    """d_s = per_seed[a][s] - per_seed[b][s] on the seeds both have."""
    for name in (a, b):
        if name not in per_seed:
            raise ValueError(f"model {name!r} has no per-seed values; known: "
                             f"{sorted(per_seed)}")
    shared = sorted(set(per_seed[a]) & set(per_seed[b]))
    return {s: per_seed[a][s] - per_seed[b][s] for s in shared}


def design(per_seed: Mapping[str, Mapping[int, float]], pairs: Sequence[tuple[str, str]],
           planning_pairs: Sequence[tuple[str, str]], *, effect: float = 5.0,
           n_images: int = 200, discordance: float = 0.05, level: float = 0.95,
           minimum: int = 5) -> dict[str, Any]:
    """The study's seed count and what it buys, from committed per-seed values.

    For each pair (A, B): the per-seed effects, their SD s, the seeds (P1) needs at s, and
    the half-width at the chosen count. The count is (P1) at the root-mean-square SD of
    ``planning_pairs`` (claims that share their runs pool their variance). (P2) bounds what
    images buy: ``discordance`` (the largest fraction of images on which two robust models
    disagree, an upper bound on v_image) gives the image share of s^2 at ``n_images`` and
    at 5 times as many."""
    rows = []
    for a, b in pairs:
        effects = paired_effects(per_seed, a, b)
        values = np.array(list(effects.values()))
        sd = float(values.std(ddof=1))
        rows.append({"a": a, "b": b, "per_seed": {str(k): v for k, v in effects.items()},
                     "mean": float(values.mean()), "sd": sd,
                     "seeds_needed": seeds_needed(sd, effect, level=level, minimum=minimum)})
    by_pair = {(r["a"], r["b"]): r for r in rows}
    planning_sd = float(np.sqrt(np.mean([by_pair[p]["sd"] ** 2 for p in planning_pairs])))
    n_seeds = seeds_needed(planning_sd, effect, level=level, minimum=minimum)
    image_var = 1e4 * discordance / n_images  # points^2
    for row in rows:
        row["half_width_at_design"] = half_width(row["sd"], n_seeds, level)
        row["image_share_of_variance"] = min(1.0, image_var / row["sd"] ** 2)
        seed_var = max(row["sd"] ** 2 - image_var, 0.0)
        row["sd_with_5x_images"] = math.sqrt(seed_var + image_var / 5)
    return {"effect_points": effect, "level": level, "minimum_seeds": minimum,
            "planning_pairs": [list(p) for p in planning_pairs], "planning_sd": planning_sd,
            "seeds": n_seeds, "images_per_seed": n_images, "discordance_bound": discordance,
            "image_variance_points2": image_var,
            "sd_upper_95": planning_sd * math.sqrt((len(rows[0]["per_seed"]) - 1) / _st.chi2.ppf(
                0.025, len(rows[0]["per_seed"]) - 1)),
            "pairs": rows}


def power(effect: float, sd: float, n_seeds: int, level: float = 0.95) -> float:
    """The probability that the seed-level ``level`` interval of a paired effect whose true
    value is ``effect`` (same units as ``sd``) excludes zero on that side: a noncentral t
    with n - 1 degrees of freedom and noncentrality effect sqrt(n) / sd."""
    n_seeds = check_int_at_least(n_seeds, 2, "n_seeds", "8")
    check_positive(sd, "sd", "3.0")
    critical = _st.t.ppf(0.5 + level / 2, n_seeds - 1)
    return float(_st.nct.sf(critical, n_seeds - 1, effect * math.sqrt(n_seeds) / sd))


def images_for_power(seed_sd: float, discordance: float, n_seeds: int, *, effect: float = 5.0,
                     target: float = 0.8, options: Sequence[int] = (50, 100, 150, 200, 300)
                     ) -> dict[str, Any]:
    """The fewest images per seed (of ``options``) at which a paired effect of ``effect``
    points is found with probability ``target``: the per-seed SD is (P2) with the seeds'
    part ``seed_sd`` (points) and an image part of at most 1e4 x ``discordance`` / images."""
    rows = []
    for images in options:
        sd = math.sqrt(seed_sd ** 2 + 1e4 * discordance / images)
        rows.append({"images": images, "sd": sd, "power": power(effect, sd, n_seeds)})
    chosen = next((r for r in rows if r["power"] >= target), rows[-1])
    return {"effect_points": effect, "target_power": target, "seeds": n_seeds,
            "seed_sd_points": seed_sd, "discordance": discordance, "options": rows,
            "images": chosen["images"], "power_at_choice": chosen["power"]}
