"""Figure helpers shared by the notebooks (one look for the same kind of plot everywhere).

Conventions every figure of the artifact follows (issue "figures that show what their
captions claim"): accuracies are drawn as percentages, as in the tables
(:func:`percent_axis`); legends sit outside the data (:func:`legend_outside`); colourbars
get their own axes (:func:`colorbar_below`, or ``fig.colorbar(..., ax=all_axes)`` under a
constrained layout), never space taken from one image of a grid; every column of an image
grid has a header (:func:`column_headers`); titles are plain text (``Context.save_figure``
strips Markdown backticks). Plots iterate over whatever methods they are given, in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adt.method.methods import LABELS, METHOD_COLORS
from adt.training.runs import Run

__all__ = ["plot_trial_effects", "plot_training_curves", "plot_accuracy_curves", "plot_loss_contours",
           "percent_axis", "legend_outside", "column_headers", "colorbar_below",
           "method_color", "method_label"]

_CURVES = (("loss", "training loss (own batches)"), ("clean_accuracy", "clean accuracy (%)"),
           ("pgd_accuracy", "PGD-{steps} accuracy (%)"))
_PANEL_TITLES = ("(a) training loss", "(b) clean accuracy", "(c) PGD-{steps} accuracy")


def method_color(method: str) -> Any:
    """The method's colour (a grey for a method without one, so new methods still plot)."""
    return METHOD_COLORS.get(method, "0.4")


def method_label(method: str) -> str:
    return LABELS.get(method, method)


def percent_axis(ax: Any, axis: str = "y", limits: bool = True) -> None:
    """Show fractions in [0, 1] on ``axis`` as percentages (0-100 %), as the tables do."""
    from matplotlib.ticker import PercentFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    if limits:
        (ax.set_ylim if axis == "y" else ax.set_xlim)(-0.02, 1.02)


def legend_outside(ax: Any, where: str = "right", **kwargs: Any) -> Any:
    """A legend beside (``"right"``) or below (``"below"``) the axes, so it hides no data."""
    handles, labels = ax.get_legend_handles_labels()
    if where == "right":
        return ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                         borderaxespad=0.0, fontsize=kwargs.pop("fontsize", 8), **kwargs)
    if where == "below":
        return ax.figure.legend(handles, labels, loc="upper center",
                                bbox_to_anchor=(0.5, kwargs.pop("y", 0.0)),
                                ncol=kwargs.pop("ncol", max(1, len(labels))),
                                fontsize=kwargs.pop("fontsize", 8), frameon=False, **kwargs)
    raise ValueError(f"where={where!r}; allowed: 'right', 'below'")


def column_headers(axes: Any, headers: Sequence[str | None], fontsize: int = 9) -> None:
    """A header above every column of an image grid (``axes`` a 2-D array; ``None``
    leaves a column, e.g. a spacer, without one)."""
    import numpy as np

    top = np.atleast_2d(axes)[0]
    if len(headers) != len(top):
        raise ValueError(f"{len(headers)} headers for {len(top)} columns; give one per column "
                         "(None for a column without a header)")
    for ax, header in zip(top, headers, strict=True):
        if header is not None:
            ax.set_title(header, fontsize=fontsize)


def colorbar_below(fig: Any, mappable: Any, column: Sequence[Any], label: str | None = None,
                   percent: bool = False) -> Any:
    """A horizontal colourbar under the last axes of an image column, within the column's
    width (it never covers a neighbouring image)."""
    cax = column[-1].inset_axes([0.05, -0.28, 0.9, 0.09])
    bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
    bar.ax.tick_params(labelsize=7)
    if label:
        bar.set_label(label, fontsize=8)
    if percent:
        from matplotlib.ticker import PercentFormatter
        bar.ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    return bar


def plot_training_curves(runs: Mapping[str, Sequence[Run]], *, title: str,
                         highlight: Sequence[str] = (), warmup_epochs: int = 0,
                         gate_epochs: tuple[int, int] | None = None) -> Any:
    """Loss, clean and PGD accuracy (in %) per epoch from each run's ``metrics.json`` history.

    One colour per method (the first seed drawn opaque, the others lighter); methods in
    ``highlight`` solid, the others dotted (all solid when ``highlight`` is empty); the
    epsilon ramp of the first ``warmup_epochs`` epochs is shaded grey (a legend entry);
    the panels are titled (a)-(c); ``gate_epochs`` (first,
    last) hatches, on the PGD panel, the epochs the "flat_last_epochs" gate of ``adt.study.gates``
    compares. The legend is to the right of the last panel.
    """
    import matplotlib.pyplot as plt

    steps = next(iter(runs.values()))[0].profile.monitor_pgd_steps
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6), layout="constrained")
    for method, method_runs in runs.items():
        style = "-" if not highlight or method in highlight else ":"
        for i, run in enumerate(method_runs):
            hist = run.metrics["history"]
            for ax, (key, _) in zip(axes, _CURVES, strict=True):
                ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], marker="o", ms=3,
                        ls=style, color=method_color(method), alpha=1.0 if i == 0 else 0.4,
                        label=method_label(method) if i == 0 else None)
    for ax, (_, label), panel in zip(axes, _CURVES, _PANEL_TITLES, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label.format(steps=steps))
        ax.set_title(panel.format(steps=steps), fontsize=9)
        if warmup_epochs:  # labelled once, on the panel that carries the legend
            ax.axvspan(0.5, warmup_epochs + 0.5, color="k", alpha=0.06,
                       label=("eps ramp (epoch 1)" if warmup_epochs == 1 else
                              f"eps ramp (epochs 1-{warmup_epochs})") if ax is axes[-1] else None)
    if gate_epochs is not None:
        axes[2].axvspan(gate_epochs[0] - 0.3, gate_epochs[1] + 0.3, facecolor="none",
                        edgecolor="0.4", hatch="///", lw=0, label="epochs of the flat_last_epochs gate")
    for ax in axes[1:]:
        percent_axis(ax)
    legend_outside(axes[-1])
    fig.suptitle(title.replace("`", ""), fontsize=9)
    return fig


def plot_accuracy_curves(epsilons: Sequence[float], by_epsilon: Mapping[str, Sequence[float]],
                         steps: Sequence[int], by_steps: Mapping[str, Sequence[float]], *,
                         epsilon: float, attack_steps: int, title: str) -> Any:
    """Accuracy (in %) against the attack radius (left) and the number of PGD steps at the
    training ``epsilon`` (right), one curve per method in the order given (Figure 4.1).

    ``by_epsilon[m][i]`` is method m's accuracy at ``epsilons[i]`` with ``attack_steps``
    steps; ``by_steps[m][j]`` at ``steps[j]``. The training epsilon is a dashed line; the
    steepest segment of every radius curve (largest drop per unit of epsilon) is marked
    with a ring at both ends, so a reader sees where the points must be dense.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.9), layout="constrained")
    eps_arr = np.asarray(epsilons, dtype=float)
    for m, values in by_epsilon.items():
        vals = np.asarray(values, dtype=float)
        axes[0].plot(eps_arr, vals, marker="o", ms=4, color=method_color(m), label=method_label(m))
        if len(vals) > 1:
            slope = -np.diff(vals) / np.diff(eps_arr)
            i = int(np.argmax(slope))
            axes[0].scatter(eps_arr[i:i + 2], vals[i:i + 2], s=90, facecolors="none",
                            edgecolors=method_color(m), linewidths=1.2, zorder=3)
    for m, values in by_steps.items():
        axes[1].plot(steps, values, marker="o", ms=4, color=method_color(m), label=method_label(m))
    axes[0].axvline(epsilon, ls="--", color="k", lw=1)
    axes[0].set_xlabel("attack radius eps'")
    axes[0].set_ylabel(f"PGD-{attack_steps} accuracy (%)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("PGD steps (log scale)")
    axes[1].set_ylabel(f"PGD accuracy at eps = {epsilon:.3g} (%)")
    for ax in axes:
        percent_axis(ax)
    # the legend (beside the right panel) also explains the marks of the left one
    axes[1].plot([], [], ls="--", color="k", lw=1, label=f"(a) training eps = {epsilon:.3g}")
    axes[1].scatter([], [], s=90, facecolors="none", edgecolors="0.4", linewidths=1.2,
                    label="(a) steepest segment's ends")
    legend_outside(axes[1])
    fig.suptitle(title.replace("`", ""), fontsize=9)
    return fig


def plot_loss_contours(surfaces: Mapping[str, Mapping[str, Any]], *, scale: float,
                       title: str, image: int = 0, levels: int = 15, fig: Any = None) -> Any:
    """Filled contours of loss surfaces (Figure 2a-e), one panel per method in the order
    given, on ONE colour scale (a log scale: the standard model's loss spans decades) with
    one colourbar, ticked at the decades it spans; the eps-box (|a|, |b| <= 1/scale) is
    drawn in every panel.

    ``surfaces[m]``: a :func:`adt.study.analysis.loss_surface` result (``a``, ``b`` in [-1, 1],
    ``loss`` of shape (B, grid, grid) with ``loss[n, i, j]`` at (a[i], b[j])); the axes
    are shown in units of epsilon, +-``scale``. ``fig``: draw into this figure or
    subfigure (a new constrained-layout figure if None); returns it.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    losses = {m: s["loss"][image].detach().cpu().double().numpy() for m, s in surfaces.items()}
    low = max(min(v.min() for v in losses.values()), 1e-4)
    high = max(max(v.max() for v in losses.values()), low * 10)
    bounds = np.geomspace(low, high, levels + 1)
    norm = LogNorm(vmin=low, vmax=high)
    n = len(surfaces)
    if fig is None:
        fig = plt.figure(figsize=(2.9 * n + 1.2, 3.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for k, (ax, (m, surf)) in enumerate(zip(axes, surfaces.items(), strict=True)):
        a = surf["a"].detach().cpu().numpy() * scale
        b = surf["b"].detach().cpu().numpy() * scale
        # loss[i, j] is at (a[i], b[j]): a on the x axis means transposing for contourf
        cs = ax.contourf(a, b, np.clip(losses[m], low, high).T, levels=bounds, norm=norm,
                         cmap="viridis")
        ax.add_patch(plt.Rectangle((-1, -1), 2, 2, fill=False, lw=1.2, ls="--", color="white"))
        ax.plot([0], [0], marker="+", color="white", ms=8)
        ax.set_aspect("equal")
        ax.set_title(f"({'abcdefghij'[k]}) {method_label(m)}", fontsize=9)
        ax.set_xlabel("a: along sign(grad) (eps)", fontsize=8)
        if k == 0:
            ax.set_ylabel("b: random direction (eps)", fontsize=8)
        ax.tick_params(labelsize=7)
    bar = fig.colorbar(cs, ax=list(axes), shrink=0.9)
    decades = 10.0 ** np.arange(np.ceil(np.log10(low) - 1e-9), np.floor(np.log10(high) + 1e-9) + 1)
    ticks = decades if len(decades) >= 2 else np.array([low, *decades, high])
    bar.set_ticks(ticks, labels=[f"1e{np.log10(v):.0f}" if v in decades else f"{v:.2g}"
                                 for v in ticks])
    bar.ax.minorticks_off()
    bar.ax.tick_params(labelsize=7)
    bar.set_label("cross-entropy (log scale)", fontsize=8)
    fig.suptitle(title.replace("`", ""), fontsize=9)
    return fig


def plot_trial_effects(results: Mapping[str, Any], epochs: Mapping[int, int],
                       margin: float, verdict_budget: int | None = None) -> Any:
    """The fair trial on one figure: a panel per headline pair (``results``: title ->
    :class:`adt.study.trial.TrialPair`), each seed's paired A_rob effect (points) at every
    budget (``epochs``: budget factor -> epochs, on a log2 axis), the mean with its seed-level
    95 % interval, zero dashed, the equivalence margin +-``margin`` shaded, and the verdict
    budget (when the stopping rule has named one) marked by a vertical line."""
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows), sharey=True,
                             squeeze=False)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for i, (ax, (title, pair)) in enumerate(zip(axes.flat, results.items(), strict=False)):
        budgets = sorted(pair.comparisons)
        xs = [epochs[b] for b in budgets]
        for seed in sorted(pair.per_seed[budgets[0]]):
            ax.plot(xs, [100 * pair.per_seed[b][seed] for b in budgets], color="0.65",
                    lw=0.9, marker="o", ms=2.5, zorder=1)
        for x, b in zip(xs, budgets, strict=True):
            e = pair.comparisons[b].effect
            ax.errorbar([x], [100 * e.estimate], yerr=[[100 * (e.estimate - e.low)],
                                                        [100 * (e.high - e.estimate)]],
                        color="black", marker="s", ms=5, capsize=4, lw=1.5, zorder=3)
        ax.axhspan(-margin, margin, color="tab:green", alpha=0.12, lw=0, zorder=0)
        ax.axhline(0, color="0.3", ls="--", lw=0.8)
        if verdict_budget in pair.comparisons:
            ax.axvline(epochs[verdict_budget], color="tab:blue", lw=1, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlim(xs[0] / 1.35, xs[-1] * 1.35)
        ax.set_title(f"({letters[i]}) {title}", fontsize=10)
        ax.set_xlabel("training epochs (log scale)")
        if i % cols == 0:
            ax.set_ylabel("A_rob effect (points)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig
