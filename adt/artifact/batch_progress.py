"""Where the papermill batch is: the notebook running (k of N), its cell, elapsed, ETA; and
the CPU stage's prior for its ETA.

:class:`NotebookProgress` is the batch's :class:`adt.core.progress.Reporter` and
:class:`~adt.core.progress.JobProgress` over the notebooks, each costing its seconds in the
last batch (the manifest's ``notebook_seconds``; a minute when unknown), so the ETA starts
from the last batch and follows this one. The cell is reported by a papermill engine
(:func:`cell_engine`) that calls back as each cell starts; a ticker thread redraws the line
(every second on a terminal, every :data:`LOG_EVERY` seconds in a log) with the time spent
in the cell, so the line keeps counting inside a long cell, and the ETA becomes a growing
lower bound (``ETA at least ...``) once a notebook runs past its last batch's time.

The same engine launches each kernel with its stderr on a pipe and forwards every line but
the kernel's two known harmless messages (:data:`KERNEL_NOISE`: ipykernel's warning that
its local TCP sockets are unencrypted, and the KeyboardInterrupt it logs when papermill
interrupts it at shutdown), so the user's terminal shows only real errors.

The CPU stage (:mod:`adt.artifact.prepare`) estimates its ETA from seconds per unit of a
job's cost: :func:`prepare_prior` gives those of the last batch (the manifest's
``prepare_seconds_per_cost``) or :data:`PREPARE_PRIOR`; :func:`kept_rates` those a batch
records. No torch here.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from adt.core.progress import JobProgress, Reporter, duration

__all__ = ["ENGINE", "KERNEL_NOISE", "LOG_EVERY", "PREPARE_PRIOR", "cell_engine",
           "kernel_noise", "forward_filtered", "NotebookProgress", "prepare_prior",
           "kept_rates"]

#: The name the engine is registered under with papermill.
ENGINE = "adt-cells"
#: Seconds between two status lines of the notebook stage in a log (not a terminal).
LOG_EVERY = 15.0
#: The kernel's stderr lines that never reach the user: ipykernel >= 7 warns at every start
#: that its sockets (local TCP, as every local kernel's) are unencrypted, and logs the
#: SIGINT that jupyter_client sends a kernel before shutting it down when it lands in a
#: message handler. Everything else the kernel writes to stderr is forwarded.
KERNEL_NOISE = (
    re.compile(r"^\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption\."),
    re.compile(r"^\[IPKernelApp\] ERROR \| KeyboardInterrupt caught in kernel\.?$"),
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
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


def kernel_noise(line: str) -> bool:
    """Whether a line of a kernel's stderr is one of :data:`KERNEL_NOISE` (colours ignored)."""
    plain = _ANSI.sub("", line).rstrip("\r\n")
    return any(pattern.search(plain) for pattern in KERNEL_NOISE)


def forward_filtered(fd: int, stream: Callable[[], TextIO]) -> threading.Thread:
    """A daemon thread that reads lines from the file descriptor ``fd`` until its end and
    writes each but :func:`kernel_noise` to ``stream()`` (looked up per line, so a replaced
    ``sys.stderr`` is honoured); it closes ``fd`` at the end."""

    def run() -> None:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace", closefd=True) as lines:
            for line in lines:
                if not kernel_noise(line):
                    out = stream()
                    out.write(line)
                    out.flush()

    thread = threading.Thread(target=run, name="kernel stderr", daemon=True)
    thread.start()
    return thread


@functools.cache
def _quiet_kernel_manager() -> type:
    """jupyter_client's asynchronous kernel manager, but for the kernel's stderr: a pipe,
    forwarded to this process's ``sys.stderr`` without :data:`KERNEL_NOISE`."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
            if "stderr" in kw:
                return await super().start_kernel(**kw)
            read, write = os.pipe()
            try:
                forward_filtered(read, lambda: sys.stderr)
                kw["stderr"] = write
                return await super().start_kernel(**kw)
            finally:
                os.close(write)  # the kernel holds its own copy; its exit ends the thread
                (self._launch_args or {}).pop("stderr", None)  # a restart: not this fd

    return QuietKernelManager


def cell_engine() -> type:
    """A papermill engine (an :class:`papermill.engines.NBClientEngine`) taking one more
    keyword, ``on_cell(index, count)``, called as each cell starts, and launching the
    kernel with its stderr filtered (:data:`KERNEL_NOISE`); registered as :data:`ENGINE`."""
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
            kwargs.setdefault("kernel_manager_class", _quiet_kernel_manager())
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
        self.reporter = Reporter("[adt.pipeline]", enabled, every=LOG_EVERY)
        self.where = ""
        self.cell_started: float | None = None  # time.monotonic() when the cell started
        cell_engine()
        self.reporter.start_ticker(self.line)

    def line(self) -> str:
        """``04_evaluation cell 12/40 for 1m05s; 3/6 notebooks, 5m02s elapsed, ETA 4m10s``
        (``ETA at least ...`` once the notebook runs past its last batch's time)."""
        began = self.cell_started
        inside = "" if began is None else f" for {duration(time.monotonic() - began)}"
        return f"{self.where}{inside}; {self.tracker.line('notebooks')}"

    def engine_kwargs(self, name: str) -> dict[str, Any]:
        """The keywords of ``papermill.execute_notebook`` that report ``name``'s cells."""

        def on_cell(index: int, count: int) -> None:
            self.where = f"{name} cell {index + 1}/{count}"
            self.cell_started = time.monotonic()
            self.reporter.status(self.line())

        return {"engine_name": ENGINE, "on_cell": on_cell}

    def start(self, index: int, detail: str) -> None:
        """Notebook ``index`` starts (``detail``: e.g. its profile and device)."""
        name = self.notebooks[index]
        self.tracker.start(index)
        self.where, self.cell_started = name, None
        self.reporter.event(f"{name} ({detail}): notebook {index + 1}/{len(self.notebooks)}, "
                            f"ETA {self.tracker.eta_text()}")

    def finish(self, index: int) -> float:
        """Notebook ``index`` ended; returns its seconds."""
        return self.tracker.finish(index)

    def close(self) -> None:
        """Stop the live line."""
        self.reporter.close()
