"""The sweep launcher: its dry run, its Slurm script, its status table and its scheduling
(with a stand-in for the trainer: no training happens here)."""

from __future__ import annotations

import io
import json
import sys

import pytest

from adt.config.profiles import get_profile
from adt.method.methods import METHODS
from adt.training import sweep as sw
from adt.training.runs import METRICS, RunLock, run_dir

PAPER = get_profile("paper")


def _fake_run(root, profile, job, epochs_done, finished=False, epoch_s=600.0):
    folder = run_dir(profile, job.method, job.seed, root)
    folder.mkdir(parents=True)
    history = [{"epoch": e + 1, "train_time_s": epoch_s - 60, "eval_time_s": 60.0}
               for e in range(epochs_done)]
    (folder / METRICS).write_text(json.dumps({"history": history, "finished": finished}))
    return folder


def _main(*argv):
    out = io.StringIO()
    code = sw.main(list(argv), out=out)
    return code, out.getvalue()


def test_the_dry_run_lists_every_unfinished_run_of_the_paper_profile(tmp_path):
    _fake_run(tmp_path, PAPER, sw.Job("pgd_at", 1), 76, finished=True)
    code, out = _main("--profile", "paper", "--seeds", "0", "1", "2", "--gpus", "0,1,2,3",
                      "--runs-root", str(tmp_path), "--dry-run")
    commands = [line for line in out.splitlines() if "adt.train" in line]
    assert code == 0 and len(commands) == 3 * len(METHODS) - 1  # every method by default
    assert commands[0] == (f"CUDA_VISIBLE_DEVICES=0 python -m adt.train --profile paper "
                           f"--method standard --seed 0 --runs-root {tmp_path} --no-progress")
    assert [c.split()[0] for c in commands[:5]] == [
        f"CUDA_VISIBLE_DEVICES={g}" for g in "01230"]
    assert not any("pgd_at --seed 1 " in c for c in commands)
    assert f"1/{3 * len(METHODS)} finished" in out


def test_several_gpus_per_run_go_through_torchrun(tmp_path):
    code, out = _main("--profile", "paper", "--methods", "adt_exp", "--gpus", "0,1,2,3",
                      "--gpus-per-run", "2", "--runs-root", str(tmp_path), "--dry-run",
                      "recipe.epochs=10")
    command = next(line for line in out.splitlines() if "adt.train" in line)
    assert command.startswith("CUDA_VISIBLE_DEVICES=0,1 torchrun --standalone "
                              "--nproc_per_node=2 -m adt.train --profile paper --method adt_exp")
    assert command.endswith("recipe.epochs=10") and "0/10" in out
    with pytest.raises(ValueError, match="groups of 3"):
        _main("--profile", "paper", "--gpus", "0,1,2,3", "--gpus-per-run", "3", "--dry-run")


def test_the_slurm_script_is_an_array_of_the_unfinished_runs(tmp_path):
    _fake_run(tmp_path, PAPER, sw.Job("standard", 0), 76, finished=True)
    script = tmp_path / "sweep.sbatch"
    code, out = _main("--profile", "paper", "--methods", "standard", "adt_exp", "--seeds", "0",
                      "1", "--gpus-per-run", "4", "--runs-root", str(tmp_path), "--slurm",
                      str(script))
    text = script.read_text()
    assert code == 0 and "an array of 3 task(s)" in out
    assert "#SBATCH --array=0-2" in text and "#SBATCH --gres=gpu:4" in text
    assert '"standard 1"' in text and '"adt_exp 0"' in text and '"standard 0"' not in text
    assert ('torchrun --standalone --nproc_per_node=4 -m adt.train --profile paper --method '
            '"$METHOD" --seed "$SEED"') in text
    assert 'read -r METHOD SEED <<< "${JOBS[$SLURM_ARRAY_TASK_ID]}"' in text
    assert f"#SBATCH --output={tmp_path.resolve()}/slurm/%A_%a.log" in text
    assert (tmp_path / "slurm").is_dir()  # sbatch does not create the log folder


def test_the_status_table_reads_the_run_folders(tmp_path):
    profile = get_profile("quick", recipe={"epochs": 8})
    jobs = [sw.Job("pgd_at", s) for s in range(4)]
    _fake_run(tmp_path, profile, jobs[0], 8, finished=True)
    _fake_run(tmp_path, profile, jobs[1], 2, epoch_s=90)
    running = _fake_run(tmp_path, profile, jobs[2], 5, epoch_s=30)
    with RunLock(running):
        statuses = [sw.run_status(profile, j, tmp_path) for j in jobs]
    assert [s.state for s in statuses] == ["finished", "partial", "running", "not started"]
    assert [s.epoch for s in statuses] == [8, 2, 5, 0]
    assert statuses[1].eta_s == pytest.approx(6 * 90) and statuses[2].eta_s == pytest.approx(90)
    table = sw.status_table(statuses).splitlines()
    assert table[0].split() == ["method", "seed", "state", "epoch", "ETA"]
    assert table[2].split() == ["pgd_at", "1", "partial", "2/8", "0h09m"]
    assert table[-1] == "1/4 finished"


def test_the_sweep_runs_each_unfinished_run_on_a_free_gpu_group(tmp_path, monkeypatch):
    profile = get_profile("quick", recipe={"epochs": 8})
    jobs = [sw.Job("pgd_at", s) for s in range(3)] + [sw.Job("adt_exp", 0)]
    _fake_run(tmp_path, profile, jobs[3], 8, finished=True)

    def fake_command(name, job, root, nproc, extra=()):
        # stands in for adt.train: records its GPUs, fails for seed 2
        folder = run_dir(profile, job.method, job.seed, root)
        code = (f"import os, pathlib; p = pathlib.Path({str(folder)!r}); p.mkdir(parents=True); "
                "(p / 'gpus').write_text(os.environ['CUDA_VISIBLE_DEVICES']); "
                f"raise SystemExit({int(job.seed == 2)})")
        return [sys.executable, "-c", code]

    monkeypatch.setattr(sw, "train_command", fake_command)
    out = io.StringIO()
    failed = sw.sweep(profile, jobs, tmp_path, [("0", "1"), ("2", "3")], poll=0.05, out=out)
    assert failed == 1
    gpus = [(run_dir(profile, "pgd_at", s, tmp_path) / "gpus").read_text() for s in range(3)]
    assert gpus[:2] == ["0,1", "2,3"] and gpus[2] in ("0,1", "2,3")
    assert not (run_dir(profile, "adt_exp", 0, tmp_path) / "gpus").exists()  # finished
    assert "failed (exit 1" in out.getvalue()


def test_the_cifar_profile_sweeps_three_seeds_of_every_method(tmp_path):
    code, out = _main("--profile", "cifar", "--gpus", "0,1", "--runs-root", str(tmp_path),
                      "--dry-run")
    commands = [line for line in out.splitlines() if "adt.train" in line]
    assert code == 0 and len(commands) == 3 * len(METHODS)
    assert {c.split("--seed ")[1].split()[0] for c in commands} == {"0", "1", "2"}
    assert "0/30" in out


@pytest.mark.parametrize("limit", ["90", "90:30", "24:00:00", "2-12", "2-12:30", "2-12:30:00"])
def test_every_slurm_time_format_is_accepted(limit, tmp_path):
    code, _ = _main("--profile", "paper", "--methods", "standard", "--seeds", "0",
                    "--runs-root", str(tmp_path), "--slurm", str(tmp_path / "s.sbatch"),
                    "--slurm-time", limit)
    assert code == 0 and f"#SBATCH --time={limit}\n" in (tmp_path / "s.sbatch").read_text()


@pytest.mark.parametrize("limit", ["bogus", "24h", "1:2:3:4", "2-", "-5", "1-2-3", ""])
def test_a_bad_slurm_time_is_refused(limit):
    with pytest.raises(ValueError, match="is not a Slurm time limit; give one of minutes"):
        sw.slurm_script("paper", [sw.Job("standard", 0)], "runs", 1, time_limit=limit)
