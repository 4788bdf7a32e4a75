"""Paired statistics for claims: seed-level t-intervals, and verdicts.

Every comparison here is *paired*: two methods are measured on the same seeds and the same
test images, as arrays of shape ``(seeds, examples)`` (per-example correctness for
accuracies, or any per-example value such as a pairwise distance or a Hessian eigenvalue).

**The seed is the unit of replication.** With two seeds or more, an effect's 95 % interval
is the t-interval over the per-seed effects d_s (each the difference, or log ratio, of the
two methods' means over the same images of seed s):

    mean(d) +- t_{0.975, S-1} * sd(d) / sqrt(S)                                  (S1)

It is valid with few seeds (it widens as S falls: t_{0.975, 2} = 4.30), and it carries the
test images' sampling noise too, since each d_s is measured on a finite sample of them.
A bootstrap that resamples three seeds cannot reach beyond the three observed effects,
which made earlier intervals too narrow. With one seed the interval is a bootstrap over
the test images (Davison & Hinkley, 1997): a measurement of that seed, never evidence
about the method (the evidence gate says so).

A claim "A beats B" is then

- **supported** when the 95 % interval of the effect excludes "no effect" in the claimed
  direction,
- **contradicted** when it excludes it in the other direction,
- **inconclusive** otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

__all__ = ["Interval", "Comparison", "seed_interval", "seed_summary", "paired_comparison",
           "verdict", "margin_verdict", "VERDICTS"]

VERDICTS = ("supported", "contradicted", "equivalent", "inconclusive")
_STATISTICS = ("difference", "ratio")


def _as_grid(values: Any, name: str) -> np.ndarray:
    """``values`` as a float array (seeds, examples); a 1-D input is one seed."""
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"{name} has shape {array.shape}; give per-example values of shape "
                         "(seeds, examples) or (examples,)")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds non-finite values; drop the examples they belong to")
    return array


def _replicates(shape: tuple[int, int], n_boot: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (n_boot, S) of seeds and (n_boot, N) of images, drawn with replacement."""
    n_seeds, n_examples = shape
    rng = np.random.default_rng(seed)
    seeds = (rng.integers(0, n_seeds, (n_boot, n_seeds)) if n_seeds > 1
             else np.zeros((n_boot, 1), dtype=int))
    return seeds, rng.integers(0, n_examples, (n_boot, n_examples))


def _boot_means(grid: np.ndarray, seeds: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The mean of ``grid`` over each replicate's seeds x images, shape (n_boot,).

    Counting how often each seed and each image is drawn turns the mean over the selected
    cells into (c_s^T G c_i) / (S N): one matrix product per replicate, no Python loop."""
    n_boot = len(seeds)
    seed_counts = np.zeros((n_boot, grid.shape[0]))
    np.add.at(seed_counts, (np.arange(n_boot)[:, None], seeds), 1.0)
    image_counts = np.zeros((n_boot, grid.shape[1]))
    np.add.at(image_counts, (np.arange(n_boot)[:, None], images), 1.0)
    totals = np.einsum("bs,sn,bn->b", seed_counts, grid, image_counts)
    return totals / (seeds.shape[1] * images.shape[1])


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % bootstrap interval."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def seed_interval(per_seed: Any, level: float = 0.95) -> Interval:
    """(S1): the mean of the per-seed values and its t-interval over seeds (at least two)."""
    values = np.asarray(per_seed, dtype=float).ravel()
    if len(values) < 2 or not np.isfinite(values).all():
        raise ValueError(f"a seed-level interval needs at least 2 finite per-seed values, got "
                         f"{values.tolist()}; with one seed use the image bootstrap")
    mean = float(values.mean())
    half = float(_st.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1)
                 / np.sqrt(len(values)))
    return Interval(mean, mean - half, mean + half)


def seed_summary(values: Any, *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """One method's cell: the mean over seeds of the per-seed means, the seed standard
    deviation (ddof 1; 0 for one seed), and the 95 % interval of the mean: (S1) over the
    seeds, or with one seed the bootstrap over its images."""
    grid = _as_grid(values, "values")
    per_seed = grid.mean(1)
    if len(per_seed) > 1:
        interval = seed_interval(per_seed)
        low, high = interval.low, interval.high
    else:
        boot = _boot_means(grid, *_replicates(grid.shape, n_boot, seed))
        low, high = np.percentile(boot, [2.5, 97.5])
    return {"mean": float(per_seed.mean()),
            "std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
            "low": float(low), "high": float(high),
            "seeds": int(grid.shape[0]), "examples": int(grid.shape[1])}


def verdict(interval: Interval, *, direction: int = 1, null: float = 0.0) -> str:
    """"supported" when the interval lies beyond ``null`` on the claimed side
    (``direction`` +1: the effect is claimed larger than ``null``; -1: smaller),
    "contradicted" when it lies beyond it on the other side, else "inconclusive"."""
    if direction not in (1, -1):
        raise ValueError(f"direction={direction!r}; allowed: 1 (claimed > null) or -1 "
                         "(claimed < null)")
    if interval.low > null:
        return "supported" if direction == 1 else "contradicted"
    if interval.high < null:
        return "supported" if direction == -1 else "contradicted"
    return "inconclusive"


def margin_verdict(interval: Interval, margin: float, *, direction: int = 1,
                   null: float = 0.0) -> str:
    """:func:`verdict` with a smallest effect of interest ``margin``: "supported" or
    "contradicted" when the interval excludes ``null`` (either way, whatever its size),
    else "equivalent" when it lies inside ``null +- margin`` (two one-sided tests at half
    the interval's error level each; Schuirmann 1987), else "inconclusive"."""
    if margin <= 0:
        raise ValueError(f"margin={margin!r} must be positive, e.g. 0.05 for 5 points")
    plain = verdict(interval, direction=direction, null=null)
    if plain != "inconclusive":
        return plain
    inside = null - margin < interval.low and interval.high < null + margin
    return "equivalent" if inside else "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of A against B: the effect, its interval, and the verdict."""

    statistic: str
    effect: Interval
    verdict: str
    direction: int
    seeds: int
    examples: int

    def as_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, **self.effect.as_dict(), "verdict": self.verdict,
                "direction": self.direction, "seeds": self.seeds, "examples": self.examples}


def paired_comparison(a: Any, b: Any, *, direction: int = 1, statistic: str = "difference",
                      n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Compare per-example values ``a`` and ``b`` (same shape (seeds, examples): the same
    seeds and test images): with several seeds by (S1) over the per-seed effects, with one
    by a paired bootstrap over its images.

    ``statistic`` "difference": mean(a) - mean(b) (per seed), no effect at 0; "ratio":
    mean(a) / mean(b), no effect at 1 (e.g. costs), its seed-level interval taken on the
    per-seed log ratios. ``direction`` is the paper's claim: +1 if it says a's statistic is
    above the null, -1 below."""
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic={statistic!r}; allowed: {', '.join(_STATISTICS)}")
    grid_a, grid_b = _as_grid(a, "a"), _as_grid(b, "b")
    if grid_a.shape != grid_b.shape:
        raise ValueError(f"a has shape {grid_a.shape} but b {grid_b.shape}: a paired "
                         "comparison needs the same seeds and the same test images")
    if statistic == "ratio" and (grid_b <= 0).any():
        raise ValueError("a ratio needs positive values of b (e.g. times or costs)")
    null = 0.0 if statistic == "difference" else 1.0
    if grid_a.shape[0] > 1:
        mean_a, mean_b = grid_a.mean(1), grid_b.mean(1)
        if statistic == "difference":
            effect = seed_interval(mean_a - mean_b)
        else:
            logs = seed_interval(np.log(mean_a / mean_b))
            effect = Interval(*(float(np.exp(v)) for v in (logs.estimate, logs.low, logs.high)))
    else:
        index = _replicates(grid_a.shape, n_boot, seed)
        boot_a, boot_b = _boot_means(grid_a, *index), _boot_means(grid_b, *index)
        mean_a, mean_b = grid_a.mean(), grid_b.mean()
        if statistic == "difference":
            estimate, boot = mean_a - mean_b, boot_a - boot_b
        else:
            estimate, boot = mean_a / mean_b, boot_a / boot_b
        low, high = np.percentile(boot, [2.5, 97.5])
        effect = Interval(float(estimate), float(low), float(high))
    return Comparison(statistic, effect, verdict(effect, direction=direction, null=null),
                      direction, int(grid_a.shape[0]), int(grid_a.shape[1]))
