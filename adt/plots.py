"""Figure helpers shared by the notebooks (one look for the same kind of plot everywhere)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adt.methods import LABELS, METHOD_COLORS
from adt.runs import Run

__all__ = ["plot_training_curves"]

_CURVES = (("loss", "training loss (own batches)"), ("clean_accuracy", "clean accuracy"),
           ("pgd_accuracy", "PGD-{steps} accuracy"))


def plot_training_curves(runs: Mapping[str, Sequence[Run]], *, title: str,
                         highlight: Sequence[str] = (), warmup_epochs: int = 0) -> Any:
    """Loss, clean and PGD accuracy per epoch from each run's ``metrics.json`` history.

    One colour per method (seeds after the first drawn lighter); methods in
    ``highlight`` solid, the others dotted (all solid when ``highlight`` is empty); the
    epsilon ramp of the first ``warmup_epochs`` epochs is shaded.
    """
    import matplotlib.pyplot as plt

    steps = next(iter(runs.values()))[0].profile.monitor_pgd_steps
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for method, method_runs in runs.items():
        style = "-" if not highlight or method in highlight else ":"
        for i, run in enumerate(method_runs):
            hist = run.metrics["history"]
            for ax, (key, _) in zip(axes, _CURVES, strict=True):
                ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], marker="o", ms=3,
                        ls=style, color=METHOD_COLORS[method], alpha=1.0 if i == 0 else 0.4,
                        label=LABELS[method] if i == 0 else None)
    for ax, (_, label) in zip(axes, _CURVES, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label.format(steps=steps))
        if warmup_epochs:
            ax.axvspan(0.5, warmup_epochs + 0.5, color="k", alpha=0.06)
    for ax in axes[1:]:
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, y=1.02, fontsize=9)
    return fig
