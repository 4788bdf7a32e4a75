"""Progress of long work: jobs done of total, elapsed, an ETA calibrated as jobs finish; a
live line on a terminal, plain lines in a log, nothing with ADT_PROGRESS=0; the notebook's
cell; images counted inside a long attack row."""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from adt.artifact.batch_progress import NotebookProgress, kept_rates, prepare_prior
from adt.artifact.prepare import _run_stages
from adt.attack.spec import pgd_spec
from adt.core.progress import JobProgress, Reporter, duration, progress_mode
from adt.evaluation import engine
from adt.method.methods import LABELS


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def shown(monkeypatch):
    monkeypatch.delenv("ADT_PROGRESS", raising=False)


def test_the_eta_starts_from_the_prior_and_follows_the_finished_jobs() -> None:
    clock = Clock()
    jobs = JobProgress([2.0, 1.0, 1.0], workers=1, prior=None, clock=clock)
    assert jobs.eta() is None and "0/3 jobs" in jobs.line() and "ETA ?" in jobs.line()
    jobs.start(0)
    clock.now = 10.0
    jobs.finish(0)  # 10 s for 2 units: 5 s a unit
    assert jobs.seconds_per_cost() == 5.0 and jobs.eta() == 10.0
    jobs.start(1)
    clock.now = 13.0  # 3 s into a 5 s job
    assert jobs.eta() == pytest.approx(2.0 + 5.0)
    assert jobs.line() == "1/3 jobs, 13s elapsed, ETA 7s"
    with_prior = JobProgress([2.0, 2.0], workers=2, prior=30.0, clock=clock)
    assert with_prior.eta() == pytest.approx(60.0)  # two workers share 120 s of work


def test_durations_read_as_a_person_writes_them() -> None:
    assert [duration(s) for s in (None, 42, 185, 3720)] == ["?", "42s", "3m05s", "1h02m"]


def test_modes_live_on_a_terminal_lines_in_a_log_off_under_adt_progress_0(shown, monkeypatch):
    assert progress_mode(True, Terminal()) == "live"
    assert progress_mode(True, io.StringIO()) == "lines"
    assert progress_mode(False, Terminal()) == "off"
    monkeypatch.setenv("ADT_PROGRESS", "0")
    assert progress_mode(True, Terminal()) == "off"


def test_a_log_gets_plain_lines_at_most_every_interval_and_every_event(shown) -> None:
    log = io.StringIO()
    reporter = Reporter("[x]", stream=log, every=3600)
    reporter.status("1/3")
    reporter.status("2/3")  # within the interval: not printed
    reporter.event("job done")
    reporter.status("3/3", force=True)
    reporter.close()
    assert log.getvalue() == "[x] 1/3\n[x] job done\n[x] 3/3\n"
    assert "\r" not in log.getvalue()


def test_a_terminal_gets_one_line_rewritten_in_place(shown) -> None:
    tty = Terminal()
    reporter = Reporter("[x]", stream=tty)
    reporter.status("1/3 jobs")
    reporter.status("2/3")
    reporter.close()
    assert tty.getvalue() == "\r[x] 1/3 jobs\r[x] 2/3     \n"


@dataclass(frozen=True)
class Job:
    method: str
    seed: int
    cost: float


def _work(job: Job, runs_root: str, force: bool) -> str:
    if job.seed < 0:
        raise RuntimeError("no data")
    Path(runs_root, f"{job.method}-{job.seed}").write_text("done")
    return f"did {job.method} seed {job.seed}"


def test_the_stages_show_k_of_n_and_an_eta_and_keep_going_after_a_failure(shown, tmp_path,
                                                                          capsys) -> None:
    jobs = [Job("standard", 0, 2.0), Job("pgd_at", -1, 1.0), Job("trades", 1, 1.0)]
    rates: dict[str, float] = {}
    seconds = _run_stages((("train", jobs, _work),), tmp_path, 0, False, prior={"train": 9.0},
                          rates=rates)
    out = capsys.readouterr().out
    assert "[adt.prepare] train: 0/3 jobs, 0s elapsed, ETA 36s" in out  # from the prior
    assert "[adt.prepare] 1/3 did standard seed 0; ETA" in out
    assert f"2/3 train {LABELS['pgd_at']} seed -1 failed: RuntimeError: no data" in out
    assert "3/3 did trades seed 1; ETA 0s" in out
    assert set(seconds) == {"train"} and set(rates) == {"train"} and rates["train"] < 9.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["standard-0", "trades-1"]


def test_no_status_lines_under_adt_progress_0_only_the_job_lines(monkeypatch, tmp_path,
                                                                  capsys) -> None:
    monkeypatch.setenv("ADT_PROGRESS", "0")
    _run_stages((("train", [Job("standard", 0, 1.0)], _work),), tmp_path, 0, False)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("[adt.prepare] 1/1 did standard seed 0")


def test_a_batch_records_measured_rates_unless_it_only_reused_runs() -> None:
    assert prepare_prior("quick", {})["train"] > 0
    assert prepare_prior("quick", {"prepare_seconds_per_cost": {"train": 2.0}})["train"] == 2.0
    assert prepare_prior("smoke", {}) == {}
    assert kept_rates({"train": 2.0}, {"train": 0.01, "evaluate": 5.0}) == {
        "train": 2.0, "evaluate": 5.0}
    assert kept_rates({"train": 2.0}, {"train": 1.5}) == {"train": 1.5}


def test_the_notebook_and_its_cell_are_shown(shown, capsys) -> None:
    progress = NotebookProgress(["01_method", "02_adt_exp"], {"01_method": 30.0}, True)
    try:
        progress.start(0, "profile smoke, device cpu")
        kwargs = progress.engine_kwargs("01_method")
        assert kwargs["engine_name"] == "adt-cells"
        kwargs["on_cell"](11, 40)
        assert progress.line().startswith("01_method cell 12/40 for 0s; 0/2 notebooks")
        assert progress.finish(0) >= 0
    finally:
        progress.close()
    out = capsys.readouterr().out
    assert "01_method (profile smoke, device cpu): notebook 1/2, ETA 1m30s" in out


def test_a_long_attack_row_counts_its_images_batch_by_batch(monkeypatch) -> None:
    bars: list[dict] = []

    class Bar:
        def __init__(self, *args, total=None, desc=None, disable=False, **kwargs) -> None:
            self.record = {"desc": desc, "total": total, "disable": disable, "updates": []}
            bars.append(self.record)

        def update(self, n: int) -> None:
            self.record["updates"].append(n)

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(engine, "tqdm", Bar)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x, y = torch.rand(10, 1, 2, 2), torch.randint(0, 2, (10,))
    spec = pgd_spec("PGD-2", 0.1, 0.25, 2)
    engine._evaluate_row(model, spec, x, y, batch_size=4, autocast=False, progress=True)
    assert bars[-1]["desc"] == "PGD-2" and bars[-1]["total"] == 10
    assert not bars[-1]["disable"] and sum(bars[-1]["updates"]) == 10
    assert len(bars[-1]["updates"]) >= 2  # moves inside the row, not once at its end


def test_a_job_past_its_estimate_makes_the_eta_a_growing_lower_bound() -> None:
    clock = Clock()
    jobs = JobProgress([1.0, 1.0, 2.0], workers=1, prior=None, clock=clock)
    jobs.start(0)
    clock.now = 10.0
    jobs.finish(0)  # 10 s a unit
    jobs.start(1)
    clock.now = 15.0  # half-way through its 10 s
    assert not jobs.overrun() and jobs.eta_text() == "25s"
    clock.now = 40.0  # 30 s into a job of 10 s: the batch is at least (10 + 30) / 2 s a unit
    assert jobs.overrun() and jobs.rate() == pytest.approx(20.0)
    assert jobs.eta() == pytest.approx(40.0) and jobs.eta_text() == "at least 40s"
    clock.now = 70.0  # still running: the bound keeps growing, the line keeps changing
    assert jobs.eta() == pytest.approx(70.0)
    assert jobs.line() == "1/3 jobs, 1m10s elapsed, ETA at least 1m10s"
    assert jobs.seconds_per_cost() == 10.0  # what a batch records: finished jobs only
    jobs.finish(1)
    assert not jobs.overrun() and jobs.eta() == pytest.approx(2 * 35.0)
    jobs.start(2)
    clock.now = 70.0 + 200.0  # the last job, past its estimate: nothing left to bound
    assert jobs.eta_text() == "? (past the estimate)"


def test_the_line_keeps_counting_inside_a_long_cell(shown, monkeypatch) -> None:
    import adt.artifact.batch_progress as batch_progress

    log = io.StringIO()
    progress = NotebookProgress(["01_method"], {"01_method": 30.0}, True)
    progress.reporter.close()
    assert progress.reporter.every == batch_progress.LOG_EVERY <= 15.0
    progress.reporter = Reporter("[adt.pipeline]", stream=log, every=0.0)
    progress.start(0, "profile smoke, device cpu")
    progress.engine_kwargs("01_method")["on_cell"](3, 23)
    progress.cell_started -= 65.2  # the cell started 65 s ago
    assert progress.line().startswith("01_method cell 4/23 for 1m05s; 0/1 notebooks")
    progress.reporter.start_ticker(progress.line, tick=0.01)  # what the batch's ticker does
    try:
        for _ in range(1000):
            if log.getvalue().count("\n") >= 4:
                break
            threading.Event().wait(0.01)
    finally:
        progress.close()
    ticks = [line for line in log.getvalue().splitlines() if "cell 4/23 for" in line]
    assert len(ticks) >= 2  # redrawn by the ticker, not only when a cell starts


def test_the_kernels_known_noise_is_dropped_and_its_real_errors_forwarded() -> None:
    from adt.artifact.batch_progress import forward_filtered, kernel_noise

    tcp = ("[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All "
           "communication (including code and outputs) is sent in plain text and is "
           "susceptible to eavesdropping.\n")
    noise = [tcp, "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.\n",
             "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel\n",
             "\x1b[33m[IPKernelApp] WARNING | Kernel is running over TCP without encryption.\n"]
    real = ["[IPKernelApp] ERROR | Exception in message handler:\n",
            "Traceback (most recent call last):\n", "KeyboardInterrupt\n",
            "RuntimeError: CUDA out of memory\n",
            "[IPKernelApp] WARNING | Kernel is running over TCP (an unknown message)\n"]
    assert all(kernel_noise(line) for line in noise)
    assert not any(kernel_noise(line) for line in real)
    read, write = os.pipe()
    out = io.StringIO()
    thread = forward_filtered(read, lambda: out)
    with os.fdopen(write, "w") as pipe:
        pipe.writelines([noise[0], real[0], noise[1], real[3]])
    thread.join(timeout=60)
    assert out.getvalue() == real[0] + real[3]


def test_a_notebooks_kernel_stderr_reaches_the_terminal_without_the_noise(tmp_path,
                                                                          capfd) -> None:
    import nbformat
    import papermill as pm
    from conftest import synthetic_notebook

    source = tmp_path / "nb.ipynb"
    nbformat.write(synthetic_notebook("import os\nos.write(2, b'a real kernel error\\n')"),
                   source)
    progress = NotebookProgress(["nb"], {}, False)
    try:
        pm.execute_notebook(str(source), str(tmp_path / "out.ipynb"), progress_bar=False,
                            **progress.engine_kwargs("nb"))
    finally:
        progress.close()
    err = capfd.readouterr().err
    assert "a real kernel error" in err
    assert "without encryption" not in err and "KeyboardInterrupt" not in err
