"""adt.prepare: the runs the chapters need, trained and evaluated in worker processes, are
exactly those the chapters then reuse (no training, no evaluation again)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from adt.artifact.conditioning import (
    AM_METHODS,
    conditioning_variant,
    load_record,
    variant_correct,
)
from adt.artifact.prepare import (
    BUDGET_FACTOR,
    BUDGET_METHODS,
    conditioning_jobs,
    evaluation_jobs,
    prepare,
    prepare_conditioning,
    training_jobs,
)
from adt.config.profiles import get_profile
from adt.core.data import load_dataset
from adt.evaluation.stored import evaluate_run
from adt.method.methods import METHODS
from adt.training.loop import train


def test_the_jobs_are_every_method_and_seed_and_the_budget_check() -> None:
    quick = get_profile("quick")
    jobs = training_jobs(quick)
    assert {(j.method, j.seed) for j in jobs if j.profile == quick} == {
        (m, s) for m in METHODS for s in quick.seeds}
    long = [j for j in jobs if j.profile == quick.with_budget(BUDGET_FACTOR)]
    assert {j.method for j in long} == set(BUDGET_METHODS) and all(j.seed == 0 for j in long)
    assert len(jobs) == len(METHODS) * 3 + 2  # ledger row b's variants are a command of their own
    assert jobs[0].method == "adt_exp" and jobs[0].profile != quick  # longest first
    evals = evaluation_jobs(quick)
    assert sum(j.black_box for j in evals) == len(METHODS)  # the first seed of each
    assert all(j.seed == quick.seeds[0] for j in evals if j.black_box)
    assert all(j.reference == (j.profile == quick) for j in evals)


def test_the_conditioning_experiment_is_both_inputs_on_every_seed() -> None:
    quick = get_profile("quick")
    train_jobs, eval_jobs = conditioning_jobs(quick)
    variant = conditioning_variant(quick)
    assert variant.methods.am_conditioning == "raw"  # quick normalises
    assert conditioning_variant(variant).methods == quick.methods
    def key(j: object) -> tuple:
        return (j.profile.methods.am_conditioning, j.method, j.seed)

    assert all(j.profile in (quick, variant) for j in train_jobs + eval_jobs)
    assert sorted(map(key, train_jobs)) == sorted(
        (p.methods.am_conditioning, m, s) for p in (quick, variant) for m in AM_METHODS
        for s in quick.seeds)
    assert sorted(map(key, eval_jobs)) == sorted(("raw", m, s) for m in AM_METHODS
                                                 for s in quick.seeds)
    assert not any(j.black_box or j.reference for j in eval_jobs)


def _never(epoch: int, batch: int) -> None:
    raise AssertionError(f"trained (epoch {epoch}, batch {batch}) instead of reusing the run")


def test_prepared_runs_and_tables_are_reused_as_they_are(tmp_path: Path) -> None:
    methods = ("standard", "pgd_at")
    profile = get_profile("smoke", methods={"pgd_steps": 2}, train_examples=64,
                          monitor_examples=16)
    seconds = prepare(profile, tmp_path, workers=2, methods=methods)
    assert set(seconds) == {"train", "evaluate"}
    data = load_dataset(profile.dataset)
    for variant, method in [(profile, m) for m in methods] + [
            (profile.with_budget(BUDGET_FACTOR), "pgd_at")]:
        run = train(variant, method, 0, data=data, device="cpu", runs_root=tmp_path,
                    progress=False, on_batch_end=_never)
        assert run.finished
        first = variant == profile
        sources = ({"Standard": train(profile, "standard", 0, data=data, device="cpu",
                                      runs_root=tmp_path, progress=False).model}
                   if first and method == "pgd_at" else
                   {"AT (PGD)": train(profile, "pgd_at", 0, data=data, device="cpu",
                                      runs_root=tmp_path, progress=False).model}
                   if first else None)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "... is not reused: ..." would fail here
            warnings.filterwarnings("ignore", category=Warning, module="adt.sanity")
            evaluate_run(run, data, sources=sources, black_box=first, progress=False)
        assert (run.path / "eval.json").is_file()


def test_a_failing_job_is_reported_and_left_to_the_notebook(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    profile = get_profile("smoke", dataset="cifar10")  # never on this machine
    prepare(profile, tmp_path, workers=2, methods=("standard",))
    out = capsys.readouterr().out
    assert "train Standard seed 0 failed" in out and "evaluate Standard seed 0 failed" in out


def test_the_command_line_exits_1_when_a_job_failed(tmp_path: Path, monkeypatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    import adt.artifact.prepare as prep

    def train(job: prep.TrainJob, runs_root: str, force: bool) -> str:
        if job.method == "pgd_at":
            raise RuntimeError("no data")
        return f"trained {job.method}"

    monkeypatch.setattr(prep, "_train", train)
    monkeypatch.setattr(prep, "_evaluate", lambda job, root, force: f"evaluated {job.method}")
    argv = ["--profile", "smoke", "--workers", "0", "--runs-root", str(tmp_path), "--no-progress"]
    assert prep.main(argv) == 1
    out, err = capsys.readouterr()
    assert "train AT (PGD) seed 0 failed: RuntimeError: no data" in out
    assert err.count("\n") == 1 and "job(s) failed" in err and "RuntimeError: no data" in err
    monkeypatch.setattr(prep, "_train", lambda job, root, force: f"trained {job.method}")
    assert prep.main(argv) == 0


def test_the_cpu_stage_is_the_command_lines_default_only() -> None:
    """`make reproduce` (the command line) prepares the runs in workers by default; a
    call of run_pipeline (tests, scripts) does not start training unless asked."""
    import inspect

    from adt.artifact.pipeline import run_pipeline

    assert inspect.signature(run_pipeline).parameters["workers"].default == 0


def test_the_cpu_stage_prepares_for_the_repositorys_chapters_only(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Another folder of notebooks (a user's, a test's) reads none of the chapters' runs:
    the stage must not train them first (on a fresh clone that is an hour)."""
    import adt.artifact.prepare
    from adt.artifact.pipeline import _prepare
    from adt.artifact.plan import plan_pipeline

    calls: list[int] = []
    monkeypatch.setattr(adt.artifact.prepare, "prepare", lambda *a, **k: calls.append(1) or {})
    (tmp_path / "mine.ipynb").write_text("{}")
    plan = plan_pipeline("quick", "cpu", tmp_path / "out", None, ("mine",), tmp_path)
    assert _prepare(plan, workers=2, force_retrain=False) is False
    assert calls == []
    ours = plan_pipeline("quick", "cpu", tmp_path / "out", None, ("01_method",), None)
    assert _prepare(ours, workers=2, force_retrain=False) is True
    assert calls == [1]


def test_the_conditioning_record_pairs_with_the_runs_it_was_made_against(tmp_path: Path) -> None:
    profile = get_profile("smoke", methods={"pgd_steps": 2}, train_examples=64,
                          monitor_examples=16)
    path = prepare_conditioning(profile, tmp_path / "runs", workers=2,
                                path=tmp_path / "record.json")
    data = load_dataset(profile.dataset)
    own = [train(profile, m, s, data=data, device="cpu", runs_root=tmp_path / "runs",
                 progress=False, on_batch_end=_never) for m in AM_METHODS for s in profile.seeds]
    column = json.loads(path.read_text())["column"]
    record = load_record(profile, own, column, path)
    other = conditioning_variant(profile).methods.am_conditioning
    assert record is not None and record["conditioning"] == other != profile.methods.am_conditioning
    correct = variant_correct(record, "adt_imp_am", list(profile.seeds))
    assert correct.shape == (len(profile.seeds), profile.eval.n_examples)
    variant = train(conditioning_variant(profile), "adt_imp_am", profile.seeds[0], data=data,
                    device="cpu", runs_root=tmp_path / "runs", progress=False)
    table = evaluate_run(variant, data, black_box=False, progress=False)
    assert correct[0].tolist() == table.row(column).tolist()
    # another column, or other own runs (here: the variants in their place), is no match
    assert load_record(profile, own, "FGSM", path) is None
    assert load_record(profile, [variant, *own[1:]], column, path) is None
    with pytest.raises(ValueError, match="no adt_imp_am variant for seeds \\[99\\]"):
        variant_correct(record, "adt_imp_am", [99])
