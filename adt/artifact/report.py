"""What a notebook needs around the compute core: its parameters, its runs, and provenance.

A notebook builds one :class:`Context` from its papermill parameters; figures and
tables are saved through it, so every artefact lands in the profile's output folder
(``figures/`` for ``quick``, ``figures/<profile>/`` for the others, a temporary
folder for ``smoke``) and is listed in ``MANIFEST.json`` with the notebook, the runs
and the git commit that produced it (:mod:`adt.config.provenance`).
"""

from __future__ import annotations

import inspect
import os
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adt.config.profiles import Profile, get_profile
from adt.config.provenance import REPO_ROOT, default_output_dir, read_manifest, record_artefact
from adt.core.data import ImageDataset, load_dataset
from adt.core.io import markdown_table, read_json, write_json
from adt.core.runtime import resolve_device
from adt.evaluation.sanity import GradientMaskingWarning
from adt.evaluation.stored import evaluate_run
from adt.evaluation.table import RobustnessTable
from adt.method.inner import InnerMaximizer
from adt.method.methods import LABELS, build_maximizer
from adt.training.archive import restore_archive
from adt.training.loop import train
from adt.training.runs import Run

__all__ = ["PAPER", "Context", "markdown_table", "plain_text", "set_style", "show_source"]

#: Numbers the paper reports, where REPRODUCTION.md records them (shown beside ours).
PAPER: dict[str, Any] = {
    "figure1_mean_pairwise_l2": {"adt_exp": 1.95, "pgd_restarts": 1.56,
                                 "setting": "CIFAR-10, standard-trained model, 100 test images"},
}


def plain_text(text: str) -> str:
    """``text`` without Markdown backticks, for matplotlib titles and labels."""
    return text.replace("`", "")


def show_source(*objects: Any) -> Any:
    """The package source of functions, methods or classes as one Markdown code block each,
    headed by the qualified name (read with :func:`inspect.getsource`, never copied), so a
    chapter shows the code next to the equation it implements."""
    from IPython.display import Markdown

    blocks = []
    for obj in objects:
        target = inspect.unwrap(getattr(obj, "fget", obj))  # properties show their getter
        module = inspect.getmodule(target)
        name = f"{module.__name__ if module else '?'}.{target.__qualname__}"
        source = textwrap.dedent(inspect.getsource(target)).rstrip()
        blocks.append(f"`{name}`\n\n```python\n{source}\n```")
    return Markdown("\n\n".join(blocks))


def _plain_titles(fig: Any) -> None:
    """Strip Markdown backticks from every text of a figure (titles, labels, legends)."""
    from matplotlib.text import Text

    for artist in fig.findobj(Text):
        text = artist.get_text()
        if "`" in text:
            artist.set_text(plain_text(text))


def _short_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> str:
    """Warnings in notebook outputs without the file path of the code that raised them."""
    return f"{category.__name__}: {message}\n"


@dataclass
class Context:
    """A notebook's parameters resolved: profile, device, where runs and artefacts go."""

    notebook: str
    profile: Profile
    device: torch.device
    seeds: tuple[int, ...]
    output_dir: Path
    runs_root: Path
    force_retrain: bool = False
    _data: ImageDataset | None = field(default=None, repr=False)

    @classmethod
    def from_parameters(cls, notebook: str, profile: str, dataset: str | None = None,
                        seeds: Sequence[int] | None = None, device: str = "auto",
                        output_dir: str | None = None, force_retrain: bool = False) -> Context:
        """Resolve the papermill parameters every notebook starts with."""
        warnings.formatwarning = _short_warning
        prof = get_profile(profile)
        if dataset:
            prof = prof.replace(dataset=dataset)
        dev = resolve_device(device if device != "auto" else prof.device)
        out = Path(output_dir) if output_dir else default_output_dir(prof.name, prof.temporary_output)
        if not out.is_absolute():
            out = REPO_ROOT / out
        runs_root = out / "runs" if prof.temporary_output else REPO_ROOT / "data" / "runs"
        if not prof.temporary_output and not force_retrain:
            restore_archive(runs_root)  # the committed runs, where this checkout lacks them
        return cls(notebook, prof, dev, tuple(seeds) if seeds else prof.seeds, out, runs_root,
                   force_retrain)

    # ------------------------------------------------------------------ data and runs
    @property
    def data(self) -> ImageDataset:
        if self._data is None:
            self._data = load_dataset(self.profile.dataset, root=REPO_ROOT / "data",
                                      device=self.device)
        return self._data

    @property
    def epsilon(self) -> float:
        return self.profile.train_epsilon

    def maximizer(self, method: str) -> InnerMaximizer:
        """A fresh inner maximiser of ``method`` with the profile's settings, on the device."""
        return build_maximizer(method, self.profile.methods, self.data.spec,
                               self.epsilon).to(self.device)

    def test_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test images (floats in [0, 1]) and labels, on the device."""
        return self.data.test_tensors(n)

    @property
    def progress(self) -> bool:
        """Whether progress bars are shown: yes, unless ``ADT_PROGRESS=0`` (the pipeline
        and ``make test`` set it, so that executed notebooks hold no bar widgets)."""
        return os.environ.get("ADT_PROGRESS", "1") != "0"

    def train(self, method: str, seed: int | None = None, progress: bool = True,
              profile: Profile | None = None) -> Run:
        """The run of ``method``: reused when finished, resumed when interrupted, else
        trained (under ``profile``, a variant of the context's, when given: an ablation)."""
        return train(profile or self.profile, method, self.seeds[0] if seed is None else seed,
                     data=self.data, device=self.device, runs_root=self.runs_root,
                     force_retrain=self.force_retrain, progress=progress and self.progress)

    def train_all(self, methods: Sequence[str], progress: bool = True) -> dict[str, list[Run]]:
        """Every method's run for every seed (reused, resumed or trained)."""
        return {m: [self.train(m, seed, progress) for seed in self.seeds] for m in methods}

    def evaluate(self, runs: dict[str, list[Run]], progress: bool = True
                 ) -> dict[str, list[RobustnessTable]]:
        """The robustness table of every run (:func:`adt.evaluation.stored.evaluate_run`): the
        profile's white-box attacks on its ``n_examples`` test images (capped at the test
        split) for every seed; for the first seed also the black-box rows (transfer attacks
        from every other method's model of that seed, SPSA). Stored tables are reused."""
        tables: dict[str, list[RobustnessTable]] = {}
        with warnings.catch_warnings():
            # a failed check is data here: each table keeps its checks, the notebooks show
            # them in the sanity table and the gates of chapter 6 act on them
            warnings.simplefilter("ignore", GradientMaskingWarning)
            for method, method_runs in runs.items():
                tables[method] = self._evaluate_method(runs, method, method_runs, progress)
        return tables

    def _evaluate_method(self, runs: dict[str, list[Run]], method: str, method_runs: list[Run],
                         progress: bool) -> list[RobustnessTable]:
        """One method's tables, every seed; black-box rows for the first."""
        tables = []
        for i, run in enumerate(method_runs):
            first = i == 0
            sources = {LABELS[o]: runs[o][i].model for o in runs if o != method}
            tables.append(evaluate_run(run, self.data, sources=sources if first else None,
                                       black_box=first, force=self.force_retrain,
                                       progress=progress and self.progress))
        return tables

    def relative(self, path: Path) -> str:
        """A path as shown in outputs: relative to the repository or the output folder."""
        path = Path(path).resolve()
        for base, prefix in ((self.output_dir.resolve(), "<output>"), (REPO_ROOT, "")):
            try:
                rel = path.relative_to(base)
                return f"{prefix}/{rel}" if prefix else str(rel)
            except ValueError:
                continue
        return path.name

    # ------------------------------------------------------------------ provenance
    def describe(self, n_examples: int | None = None, methods: Sequence[str] | None = None,
                 markdown: bool = True, seeds: Sequence[int] | None = None) -> str:
        """One line stating the profile, dataset, model, seeds (the chapter's, or ``seeds``)
        and test examples (Markdown; ``markdown=False`` for figure titles: no backticks)."""
        p = self.profile
        kwargs = ", ".join(f"{k}={v}" for k, v in p.model_kwargs.items())
        parts = [f"profile `{p.name}`", f"dataset `{p.dataset}` (eps = {self.epsilon:.4g})",
                 f"model `{p.model}({kwargs})`",
                 f"seeds {list(self.seeds if seeds is None else seeds)}"]
        if methods:
            parts.append("methods " + ", ".join(LABELS[m] for m in methods))
        if n_examples is not None:
            parts.append(f"{n_examples} test examples")
        line = " · ".join(parts)
        return line if markdown else plain_text(line)

    def _record(self, name: str, files: list[Path], kind: str, runs: Sequence[Run | Path],
                caption: str, n_examples: int | None, extra: dict[str, Any] | None) -> None:
        record_artefact(self.output_dir, name, {
            "kind": kind, "files": [self.relative(f).removeprefix("<output>/") for f in files],
            "notebook": f"notebooks/{self.notebook}.ipynb", "caption": caption,
            "profile": self.profile.name, "dataset": self.profile.dataset,
            "model": self.profile.model, "model_kwargs": dict(self.profile.model_kwargs),
            # the seeds actually used: those of the runs behind the artefact
            "seeds": sorted({r.seed for r in runs if isinstance(r, Run)}) or list(self.seeds),
            "n_examples": n_examples,
            "runs": [self.relative(r.path if isinstance(r, Run) else r) for r in runs],
            **(extra or {})})

    def save_figure(self, fig: Any, name: str, *, caption: str, runs: Sequence[Run | Path] = (),
                    n_examples: int | None = None, extra: dict[str, Any] | None = None) -> list[Path]:
        """Save ``fig`` as PNG and PDF under the output folder and list it in the manifest.

        Figure texts are plain text: Markdown backticks (e.g. from :meth:`describe`) are
        removed from every title, label and legend before saving."""
        _plain_titles(fig)
        files = []
        for ext in ("png", "pdf"):
            path = self.output_dir / f"{name}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=150, bbox_inches="tight",
                        metadata={"CreationDate": None} if ext == "pdf" else {"Software": None})
            files.append(path)
        self._record(name, files, "figure", runs, caption, n_examples, extra)
        return files

    def save_document(self, name: str, text: str, *, caption: str,
                      runs: Sequence[Run | Path] = ()) -> Path:
        """Save a Markdown document (e.g. ``CLAIMS.md``) under the output folder and list
        it in the manifest."""
        path = self.output_dir / f"{name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self._record(name, [path], "document", runs, caption, None, None)
        return path

    def save_result(self, name: str, values: dict[str, Any], *, caption: str,
                    runs: Sequence[Run | Path] = (), n_examples: int | None = None) -> None:
        """Save a chapter's computed values (JSON under ``results/``) for a later chapter to
        read with :meth:`load_result` instead of computing them again, and list them in
        the manifest."""
        path = self.output_dir / "results" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(values, path)
        self._record(name, [path], "result", runs, caption, n_examples, None)

    def load_result(self, name: str) -> dict[str, Any]:
        """The values another chapter saved with :meth:`save_result`; raises naming the
        chapter to run first when they are missing."""
        path = self.output_dir / "results" / f"{name}.json"
        entry = read_manifest(self.output_dir)["artefacts"].get(name)
        if entry is None or not path.is_file():
            writer = entry["notebook"] if entry else "an earlier chapter"
            raise FileNotFoundError(
                f"{path} is missing: it is written by {writer}; run the chapters in order "
                f"(make reproduce, or that notebook with output_dir={self.output_dir}) first")
        return read_json(path)

    def save_table(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]], *,
                   caption: str, runs: Sequence[Run | Path] = (), n_examples: int | None = None,
                   extra: dict[str, Any] | None = None) -> str:
        """Save a table as CSV and Markdown under ``tables/``; returns the Markdown."""
        import csv
        import io

        folder = self.output_dir / "tables"
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        csv_path = folder / f"{name}.csv"
        csv_path.write_text(buf.getvalue())
        md = f"{caption}\n\n{markdown_table(header, rows)}"
        md_path = folder / f"{name}.md"
        md_path.write_text(md)
        self._record(name, [csv_path, md_path], "table", runs, caption, n_examples, extra)
        return md


def set_style() -> None:
    """The seaborn style of every figure of the artifact."""
    import matplotlib
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titlesize": 11,
                                "figure.autolayout": False})
