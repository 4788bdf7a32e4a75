"""Progress of long work as users of research tools expect it: done of total, elapsed, ETA.

A :class:`Reporter` writes a live line (rewritten in place) when its stream is a terminal,
plain lines when it is not (a CI log stays readable: one line per event and a status line
at most every ``every`` seconds), and nothing when progress is off (``progress=False``,
``--no-progress``, or ``ADT_PROGRESS=0`` in the environment, as ``make test`` sets).

:class:`JobProgress` counts jobs run by ``workers`` processes and estimates the time left
from each job's relative ``cost``: seconds per unit of cost start from a prior (measured
by an earlier batch) and are replaced by the finished jobs' own measurements. A job that
runs past its estimate makes the ETA a lower bound that grows while it runs (``ETA at least
...``), so the line never freezes inside a long step.

No torch here: the papermill launcher (:mod:`adt.artifact.pipeline`) uses it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

__all__ = ["progress_mode", "duration", "Reporter", "JobProgress"]


def progress_mode(enabled: bool = True, stream: TextIO | None = None) -> str:
    """``"off"`` (``enabled`` false or ``ADT_PROGRESS=0``), ``"live"`` (``stream``, default
    stdout, is a terminal) or ``"lines"``."""
    if not enabled or os.environ.get("ADT_PROGRESS", "1") == "0":
        return "off"
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "live" if isatty is not None and isatty() else "lines"


def duration(seconds: float | None) -> str:
    """``seconds`` as ``42s``, ``3m05s`` or ``1h02m``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    minutes = seconds // 60
    return f"{minutes // 60}h{minutes % 60:02d}m"


class Reporter:
    """Status and event lines under ``prefix`` (e.g. ``[adt.prepare]``) on ``stream``.

    ``status(text)`` is the current state: on a terminal it replaces the live line; in a
    log it is printed when ``every`` seconds have passed since the last printed status (or
    at once with ``force``). ``event(text)`` is a permanent line (a job finished), printed
    in every mode but ``off``; :meth:`start_ticker` redraws the status from ``line()``
    every ``tick`` seconds, so elapsed time moves while a long step runs."""

    def __init__(self, prefix: str, enabled: bool = True, stream: TextIO | None = None,
                 every: float = 60.0) -> None:
        self.prefix = prefix
        self.stream = sys.stdout if stream is None else stream
        self.mode = progress_mode(enabled, self.stream)
        self.every = every
        self._last = -float("inf")
        self._width = 0
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def status(self, text: str, force: bool = False) -> None:
        """Show the current state (see the class)."""
        with self._lock:
            if self.mode == "live":
                line = f"{self.prefix} {text}"
                self._write("\r" + line.ljust(self._width))
                self._width = len(line)
            elif self.mode == "lines" and (force or time.monotonic() - self._last >= self.every):
                self._write(f"{self.prefix} {text}\n")
                self._last = time.monotonic()

    def event(self, text: str) -> None:
        """A permanent line, printed in every mode (above the live line on a terminal)."""
        with self._lock:
            if self.mode == "live" and self._width:
                self._write("\r" + " " * self._width + "\r")
                self._width = 0
            self._write(f"{self.prefix} {text}\n")

    def start_ticker(self, line: Callable[[], str], tick: float = 1.0) -> None:
        """Redraw ``line()`` every ``tick`` seconds (live) or every ``every`` seconds (lines)
        from a daemon thread, until :meth:`close`."""
        if self.mode == "off" or self._stop is not None:
            return
        self._stop = threading.Event()
        stop, wait = self._stop, tick if self.mode == "live" else min(tick, self.every)

        def run() -> None:
            while not stop.wait(wait):
                self.status(line())

        threading.Thread(target=run, name=f"progress {self.prefix}", daemon=True).start()

    def close(self) -> None:
        """Stop the ticker and end the live line."""
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        with self._lock:
            if self.mode == "live" and self._width:
                self._write("\n")
                self._width = 0


class JobProgress:
    """``len(costs)`` jobs of relative costs ``costs`` run by ``workers`` processes.

    The ETA is the work left (jobs not started at full cost, running ones less the time they
    have run) at the seconds per unit of cost measured on the finished jobs (the ``prior``
    until one finishes; None: no ETA before then), shared by the busy workers."""

    def __init__(self, costs: Sequence[float], workers: int = 1,
                 prior: float | None = None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.costs = [max(float(c), 1e-9) for c in costs]
        self.workers = max(1, workers)
        self.prior = prior
        self.clock = clock
        self.started_at = clock()
        self.running: dict[int, float] = {}
        self.finished: dict[int, float] = {}  # job index -> its seconds

    @property
    def total(self) -> int:
        """The number of jobs."""
        return len(self.costs)

    @property
    def done(self) -> int:
        """The jobs finished (failed ones included)."""
        return len(self.finished)

    def start(self, index: int) -> None:
        """Job ``index`` starts now."""
        self.running[index] = self.clock()

    def finish(self, index: int) -> float:
        """Job ``index`` ended now; returns its seconds."""
        began = self.running.pop(index, self.started_at)
        self.finished[index] = self.clock() - began
        return self.finished[index]

    def seconds_per_cost(self) -> float | None:
        """Measured on the finished jobs, else the prior."""
        done = dict(self.finished)  # a snapshot: the ticker thread reads while jobs finish
        if not done:
            return self.prior
        return sum(done.values()) / sum(self.costs[i] for i in done)

    def elapsed(self) -> float:
        """Seconds since the first job was created."""
        return self.clock() - self.started_at

    def rate(self) -> float | None:
        """Seconds per unit of cost for the ETA: :meth:`seconds_per_cost`, raised while the
        running jobs together have taken longer than it allows. Their time so far is a lower
        bound on their cost, so (finished seconds + running seconds) / (finished costs +
        running costs) is a lower bound on this batch's rate: it grows while a job
        overruns, and the ETA with it."""
        base = self.seconds_per_cost()
        running = dict(self.running)
        if base is None or not running:
            return base
        now, done = self.clock(), dict(self.finished)
        seconds = sum(done.values()) + sum(now - t for t in running.values())
        cost = sum(self.costs[i] for i in done) + sum(self.costs[i] for i in running)
        return max(base, seconds / cost)

    def overrun(self) -> bool:
        """Whether a running job has run longer than its cost at the measured (or prior)
        rate allows: the ETA is then a lower bound."""
        base = self.seconds_per_cost()
        if base is None:
            return False
        now = self.clock()
        return any(now - t > self.costs[i] * base for i, t in dict(self.running).items())

    def eta(self) -> float | None:
        """Seconds left (None when unknown); a lower bound while :meth:`overrun`."""
        rate = self.rate()
        if rate is None:
            return None
        now = self.clock()
        running, done = dict(self.running), dict(self.finished)
        pending = [i for i in range(self.total) if i not in done and i not in running]
        work = sum(self.costs[i] for i in pending) * rate
        work += sum(max(self.costs[i] * rate - (now - t), 0.0) for i, t in running.items())
        busy = min(self.workers, len(pending) + len(running)) or 1
        return work / busy

    def eta_text(self) -> str:
        """The ETA as shown: ``4m10s``; ``at least 4m10s`` while a job overruns its estimate
        (``? (past the estimate)`` when no other job is left); ``?`` when unknown."""
        eta = self.eta()
        if eta is None or not self.overrun():
            return duration(eta)
        return f"at least {duration(eta)}" if eta >= 1 else "? (past the estimate)"

    def line(self, what: str = "jobs") -> str:
        """``3/14 jobs, 5m02s elapsed, ETA 21m10s`` (``ETA at least ...`` while a job
        overruns its estimate)."""
        return (f"{self.done}/{self.total} {what}, {duration(self.elapsed())} elapsed, "
                f"ETA {self.eta_text()}")
