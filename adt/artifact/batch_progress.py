"""Where the papermill batch is: the notebook running (k of N), its cell, elapsed, ETA; and
the CPU stage's prior for its ETA.

:class:`NotebookProgress` is the batch's :class:`adt.core.progress.Reporter` and
:class:`~adt.core.progress.JobProgress` over the notebooks, each costing its seconds in the
last batch (the manifest's ``notebook_seconds``; a minute when unknown), so the ETA starts
from the last batch and follows this one. The cell is reported by a papermill engine
(:func:`cell_engine`) that calls back as each cell starts.

The CPU stage (:mod:`adt.artifact.prepare`) estimates its ETA from seconds per unit of a
job's cost: :func:`prepare_prior` gives those of the last batch (the manifest's
``prepare_seconds_per_cost``) or :data:`PREPARE_PRIOR`; :func:`kept_rates` those a batch
records. No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from adt.core.progress import JobProgress, Reporter, duration

__all__ = ["ENGINE", "PREPARE_PRIOR", "cell_engine", "NotebookProgress", "prepare_prior",
           "kept_rates"]

#: The name the engine is registered under with papermill.
ENGINE = "adt-cells"
#: Seconds per unit of a job's cost in one-thread workers, by profile and stage, before a
#: batch has measured them: the committed quick batch on 2 cores.
PREPARE_PRIOR = {"quick": {"train": 1.5, "evaluate": 100.0}}


def prepare_prior(profile: str, manifest: Mapping[str, Any]) -> dict[str, float]:
    """The CPU stage's seconds per unit of cost by stage: the last batch's (``manifest``),
    else :data:`PREPARE_PRIOR`'s (empty when neither knows ``profile``)."""
    return {**PREPARE_PRIOR.get(profile, {}), **manifest.get("prepare_seconds_per_cost", {})}


def kept_rates(prior: Mapping[str, float], rates: Mapping[str, float]) -> dict[str, float]:
    """What a batch records: ``rates`` measured now, except those far below ``prior`` (a
    batch that reused finished runs measured the reuse, not the work)."""
    return {**prior, **{k: v for k, v in rates.items() if k not in prior or v > prior[k] / 4}}


def cell_engine() -> type:
    """A papermill engine (an :class:`papermill.engines.NBClientEngine`) taking one more
    keyword, ``on_cell(index, count)``, called as each cell starts; registered as
    :data:`ENGINE`."""
    from papermill.engines import NBClientEngine, papermill_engines

    class CellEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
            on_cell: Callable[[int, int], None] = kwargs.pop("on_cell")
            start = nb_man.cell_start

            def cell_start(cell: Any, cell_index: int | None = None, **kw: Any) -> Any:
                on_cell(cell_index or 0, len(nb_man.nb.cells))
                return start(cell, cell_index, **kw)

            nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE, CellEngine)
    return CellEngine


class NotebookProgress:
    """The progress of running ``notebooks`` in order (``last``: their seconds in the
    last batch); ``enabled=False`` shows only the line per notebook."""

    def __init__(self, notebooks: Sequence[str], last: Mapping[str, float],
                 enabled: bool = True) -> None:
        self.notebooks = list(notebooks)
        self.tracker = JobProgress([float(last.get(n, 60.0)) for n in self.notebooks], 1, 1.0)
        self.reporter = Reporter("[adt.pipeline]", enabled)
        self.where = ""
        cell_engine()
        self.reporter.start_ticker(self.line)

    def line(self) -> str:
        """``04_evaluation cell 12/40; 3/6 notebooks, 5m02s elapsed, ETA 4m10s``."""
        return f"{self.where}; {self.tracker.line('notebooks')}"

    def engine_kwargs(self, name: str) -> dict[str, Any]:
        """The keywords of ``papermill.execute_notebook`` that report ``name``'s cells."""

        def on_cell(index: int, count: int) -> None:
            self.where = f"{name} cell {index + 1}/{count}"
            self.reporter.status(self.line())

        return {"engine_name": ENGINE, "on_cell": on_cell}

    def start(self, index: int, detail: str) -> None:
        """Notebook ``index`` starts (``detail``: e.g. its profile and device)."""
        name = self.notebooks[index]
        self.tracker.start(index)
        self.where = name
        self.reporter.event(f"{name} ({detail}): notebook {index + 1}/{len(self.notebooks)}, "
                            f"ETA {duration(self.tracker.eta())}")

    def finish(self, index: int) -> float:
        """Notebook ``index`` ended; returns its seconds."""
        return self.tracker.finish(index)

    def close(self) -> None:
        """Stop the live line."""
        self.reporter.close()
