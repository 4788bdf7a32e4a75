"""Reliability (issue 14): no silent wrong results, no destroyed committed files, failures
early and named.

One section per point of the issue: cached results carry their identity; the pipeline is
transactional; non-finite means failure; one run, one folder, one writer; early, named
failures; and the other findings. Training runs on a smoke profile shrunk to 64 images
(a run takes well under a second); the pipeline's tests use tiny synthetic notebooks that
import no torch, in temporary folders that stand in for ``notebooks/`` and ``figures/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from conftest import recording_notebook, synthetic_notebook, trained_small_cnn

from adt.artifact import bench, costs, pipeline, plan
from adt.artifact.pipeline import PipelineError, run_pipeline
from adt.artifact.plan import plan_pipeline
from adt.attack.functions import pgd
from adt.attack.spec import CLEAN
from adt.config.profiles import PROFILES, get_profile
from adt.config.provenance import (
    COMMITTED_PROFILE,
    MANIFEST,
    REPO_ROOT,
    checkout_tag,
    default_output_dir,
    record_artefact,
)
from adt.core import _checks
from adt.core.data import ImageDataset, load_dataset
from adt.core.io import read_json, write_json
from adt.core.primitives import check_batch
from adt.evaluation import stored as evaluate
from adt.evaluation.engine import robustness_table
from adt.evaluation.sanity import GradientMaskingWarning
from adt.evaluation.stored import evaluate_run, run_fingerprint
from adt.evaluation.table import load_table
from adt.training.loop import train
from adt.training.modules import load_run
from adt.training.runs import (
    LOCK,
    METRICS,
    RunLock,
    RunLockedError,
    profile_folder,
    run_dir,
    state_hash,
)

CPU = "cpu"
ROOT = Path(__file__).resolve().parents[1]
#: The smoke profile shrunk further: 2 batches of 32 images, 16 monitor images, eval on 8.
TINY = get_profile("smoke", train_examples=64, monitor_examples=16, recipe={"batch_size": 32},
                   eval={"n_examples": 8, "batch_size": 8, "spsa_examples": 4})


@pytest.fixture(scope="module")
def mnist() -> ImageDataset:
    return load_dataset("mnist5k")


def _train(root: Path, data: ImageDataset, profile=TINY, method: str = "standard",
           seed: int = 0, **kwargs):
    return train(profile, method, seed, data=data, runs_root=root, progress=False, device=CPU,
                 **kwargs)


def _never(epoch: int, batch: int) -> None:
    raise AssertionError(f"trained (epoch {epoch}, batch {batch}) instead of failing first")


class _Recomputed(Exception):
    """Raised by a stand-in of robustness_table: the stored table was not reused."""


def _no_attacks(*args, **kwargs):
    raise _Recomputed


# ============================================================================ 1. identity


@pytest.fixture(scope="module")
def evaluated(mnist: ImageDataset, tmp_path_factory: pytest.TempPathFactory):
    """A finished tiny run (standard, seed 0) with its eval.json, and a second run (seed 1)."""
    root = tmp_path_factory.mktemp("evaluated")
    run = _train(root, mnist)
    table = evaluate_run(run, mnist, progress=False)
    other = _train(root, mnist, seed=1)
    return root, run, table, other


def test_eval_json_records_the_identity_of_its_run(evaluated) -> None:
    _, run, table, _ = evaluated
    stored = read_json(run.path / "eval.json")["meta"]["run_fingerprint"]
    assert stored == run_fingerprint(run) == table.meta["run_fingerprint"]
    assert set(stored) == {"profile_hash", "method", "seed", "epoch", "state_hash"}
    assert (stored["method"], stored["seed"], stored["epoch"]) == ("standard", 0, 1)
    assert stored["state_hash"] == state_hash(run.model)


def test_the_own_eval_json_is_reused(evaluated, mnist, monkeypatch) -> None:
    _, run, table, _ = evaluated
    monkeypatch.setattr(evaluate, "robustness_table", _no_attacks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reused silently ...
        # ... but for the table's own failed checks, if any (they depend on the model)
        warnings.simplefilter("ignore", GradientMaskingWarning)
        reused = evaluate_run(run, mnist, progress=False)
    assert torch.equal(reused.correct, table.correct)


def test_a_foreign_eval_json_is_recomputed_with_the_reason(evaluated, mnist,
                                                           monkeypatch) -> None:
    """The probe: another run's eval.json copied into a run folder was returned as its table."""
    _, run, _, other = evaluated
    shutil.copyfile(run.path / "eval.json", other.path / "eval.json")
    monkeypatch.setattr(evaluate, "robustness_table", _no_attacks)
    with pytest.warns(UserWarning, match="another run") as caught, pytest.raises(_Recomputed):
        evaluate_run(other, mnist, progress=False)
    message = str(caught[0].message)
    assert "seed" in message and "state_hash" in message and str(other.path) in message


def test_an_eval_json_of_other_weights_is_recomputed(evaluated, mnist, monkeypatch,
                                                     tmp_path) -> None:
    _, run, _, _ = evaluated
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    changed = load_run(TINY, "standard", runs_root=run.path.parents[2], device=CPU)
    changed.path = copy
    with torch.no_grad():
        next(changed.model.parameters()).add_(1e-3)  # e.g. fine-tuned in a notebook
    monkeypatch.setattr(evaluate, "robustness_table", _no_attacks)
    with pytest.warns(UserWarning, match="state_hash"), pytest.raises(_Recomputed):
        evaluate_run(changed, mnist, progress=False)


def test_an_eval_json_without_identity_is_recomputed(evaluated, mnist, monkeypatch,
                                                     tmp_path) -> None:
    _, run, _, _ = evaluated
    blob = read_json(run.path / "eval.json")
    del blob["meta"]["run_fingerprint"]  # written by an earlier version
    write_json(blob, run.path.parent / "old.json")
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    shutil.copyfile(run.path.parent / "old.json", copy / "eval.json")
    run_copy = load_run(TINY, "standard", runs_root=run.path.parents[2], device=CPU)
    run_copy.path = copy
    monkeypatch.setattr(evaluate, "robustness_table", _no_attacks)
    with pytest.warns(UserWarning, match="does not record which run"), \
            pytest.raises(_Recomputed):
        evaluate_run(run_copy, mnist, progress=False)


def test_a_killed_final_metrics_write_is_repaired(mnist, tmp_path, monkeypatch) -> None:
    """The checkpoint of the last epoch was written, metrics.json was not: a rerun repairs it."""
    import adt.training.runs

    real = adt.training.runs.write_json

    def killed(obj, path):
        if Path(path).name == METRICS and obj.get("finished"):
            raise KeyboardInterrupt  # killed between the checkpoint and metrics.json
        return real(obj, path)

    profile = TINY.replace(recipe={"epochs": 2})
    monkeypatch.setattr(adt.training.runs, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, mnist, profile)
    monkeypatch.setattr(adt.training.runs, "write_json", real)
    path = run_dir(profile, "standard", 0, tmp_path)
    assert not read_json(path / METRICS)["finished"]  # stale: one epoch of two
    with pytest.warns(UserWarning, match="disagrees with the checkpoint"):
        run = _train(tmp_path, mnist, profile, on_batch_end=_never)
    assert run.finished
    assert read_json(path / METRICS) == json.loads(json.dumps(run.metrics))


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_load_run_repairs_missing_or_corrupt_metrics(evaluated, tmp_path, damage) -> None:
    root = tmp_path / "runs"
    shutil.copytree(evaluated[0], root)
    path = run_dir(TINY, "standard", 0, root)
    if damage == "missing":
        (path / METRICS).unlink()
    else:
        (path / METRICS).write_text('{"history": [')
    with pytest.warns(UserWarning, match=str(path / METRICS)):
        run = load_run(TINY, "standard", runs_root=root, device=CPU)
    assert read_json(path / METRICS) == json.loads(json.dumps(run.metrics))


# ============================================================================ 2. pipeline


@pytest.fixture
def committed(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in of the committed notebooks/ (a, b, broken, slow) and figures/ (a quick
    manifest listing a and b, with their files)."""
    src, out = tmp_path / "notebooks", tmp_path / "figures"
    src.mkdir()
    for name in ("a", "b"):
        nbformat.write(recording_notebook(name), src / f"{name}.ipynb")
    nbformat.write(synthetic_notebook("raise RuntimeError('deliberate failure')"), src / "broken.ipynb")
    nbformat.write(synthetic_notebook(
        "import time\nfrom pathlib import Path\n"
        f"Path({str(tmp_path / 'started')!r}).write_text('yes')\n"
        "time.sleep(120)"), src / "slow.ipynb")
    out.mkdir()
    for name in ("a", "b"):
        (out / f"{name}.txt").write_text("committed")
        record_artefact(out, name, {"kind": "table", "files": [f"{name}.txt"],
                                    "notebook": f"notebooks/{name}.ipynb", "profile": "quick"})
    write_json({**read_json(out / MANIFEST), "profile": "quick"}, out / MANIFEST)
    return src, out


def _snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def test_only_the_committed_profile_writes_the_committed_notebooks(committed,
                                                                   tmp_path) -> None:
    src, _ = committed
    before = _snapshot(src)
    out = tmp_path / "smoke-out"
    run_pipeline("smoke", CPU, output_dir=out, notebooks=("a",), notebooks_dir=src)
    assert _snapshot(src) == before  # the sources are as they were
    executed = nbformat.read(out / "notebooks" / "a.ipynb", as_version=4)
    assert executed.metadata["papermill"]["parameters"]["profile"] == "smoke"
    # the real defaults: smoke's executed notebooks go under its own output folder
    smoke = plan_pipeline("smoke", CPU)
    assert smoke.target == smoke.output / "notebooks" and REPO_ROOT not in smoke.target.parents
    assert plan_pipeline(COMMITTED_PROFILE, CPU).target == REPO_ROOT / "notebooks"
    with pytest.raises(ValueError, match="only 'quick'"):
        plan_pipeline("smoke", CPU, executed_dir=REPO_ROOT / "notebooks")
    with pytest.raises(ValueError, match="only 'quick'"):
        plan_pipeline("smoke", CPU, output_dir=REPO_ROOT / "figures")


def test_cuda_without_a_gpu_is_refused_before_anything_is_touched(committed, monkeypatch,
                                                                  capsys) -> None:
    src, out = committed
    monkeypatch.setattr(plan, "_cuda_available", lambda: False)
    before = _snapshot(src, out)
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_pipeline(COMMITTED_PROFILE, "cuda", output_dir=out, notebooks=("a",),
                     notebooks_dir=src)
    # a profile that trains on CUDA by default, under --device auto
    with pytest.raises(ValueError, match="'fashion' trains on CUDA"):
        run_pipeline("fashion", "auto", output_dir=out.parent / "fashion", notebooks=("a",),
                     notebooks_dir=src)
    code = pipeline.main(["--profile", "quick", "--device", "cuda", "--output-dir", str(out),
                          "--notebooks-dir", str(src), "--notebooks", "a"])
    assert code == 2 and "CUDA is not available" in capsys.readouterr().err
    assert _snapshot(src, out) == before
    assert not (out.parent / "fashion").exists()


def test_unknown_notebook_names_are_refused_before_anything_is_touched(committed) -> None:
    src, out = committed
    before = _snapshot(src, out)
    with pytest.raises(ValueError, match="05_figure'") as info:
        run_pipeline(COMMITTED_PROFILE, CPU, notebooks=("05_figure",))
    assert "05_figures" in str(info.value)  # lists the allowed names
    with pytest.raises(ValueError, match="nope"):
        run_pipeline(COMMITTED_PROFILE, CPU, output_dir=out, notebooks=("a", "nope"),
                     notebooks_dir=src)
    assert _snapshot(src, out) == before


def test_a_partial_batch_merges_the_manifest(committed) -> None:
    src, out = committed
    before = read_json(out / MANIFEST)["artefacts"]
    run_pipeline(COMMITTED_PROFILE, CPU, output_dir=out, notebooks=("b",), notebooks_dir=src)
    after = read_json(out / MANIFEST)
    assert set(after["artefacts"]) == {"a", "b"}  # a was not run: its entry stays
    assert after["artefacts"]["a"] == before["a"]
    assert after["artefacts"]["b"]["created"] >= before["b"]["created"]
    assert (out / "a.txt").read_text() == "committed" and (out / "b.txt").read_text() == "quick cpu"
    assert set(after["notebook_seconds"]) == {"b"} and after["profile"] == "quick"


def test_a_partial_batch_sees_the_outputs_of_the_notebooks_outside_it(committed) -> None:
    src, out = committed
    nbformat.write(synthetic_notebook(
        "from pathlib import Path\n"
        "from adt.config.provenance import manifest_artefacts\n"
        "listed = manifest_artefacts(output_dir)\n"
        "assert 'a' in listed and Path(output_dir, 'a.txt').read_text() == 'committed', listed"),
        src / "sees.ipynb")
    run_pipeline(COMMITTED_PROFILE, CPU, output_dir=out, notebooks=("sees",), notebooks_dir=src)
    assert set(read_json(out / MANIFEST)["artefacts"]) == {"a", "b"}
    assert (out / "a.txt").read_text() == "committed"


def test_a_failing_notebook_leaves_every_file_as_it_was(committed) -> None:
    src, out = committed
    before = _snapshot(src, out)
    with pytest.raises(PipelineError, match="deliberate failure") as info:
        run_pipeline(COMMITTED_PROFILE, CPU, output_dir=out, notebooks=("b", "broken"),
                     notebooks_dir=src)
    assert _snapshot(src, out) == before  # b ran, but nothing was moved into place
    kept = Path(str(info.value).rsplit(" is ", 1)[1])
    assert kept.is_file() and kept.name == "broken.ipynb" and src not in kept.parents


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the pipeline ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the notebook never started")
        time.sleep(0.2)


@pytest.mark.parametrize("target", ["process group", "launcher only"])
def test_ctrl_c_stops_the_batch_and_leaves_every_file_as_it_was(committed, tmp_path,
                                                                target: str) -> None:
    """Ctrl-C in a terminal reaches the launcher and the kernel (its process group); a
    `kill -INT` the launcher only. Either way: stop, say so, exit non-zero, touch nothing."""
    src, out = committed
    before = _snapshot(src, out)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "adt.pipeline", "--profile", "quick", "--device", "cpu",
         "--output-dir", str(out), "--notebooks-dir", str(src), "--notebooks", "a", "slow"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        _wait_for(tmp_path / "started", process)
        if target == "process group":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    assert "interrupted" in err and "as they were" in err
    assert _snapshot(src, out) == before  # a ran, but nothing was moved into place
    assert not list(src.glob(".*.tmp")) and not list(out.glob(".*.tmp"))


# ============================================================================ 3. non-finite


def test_a_diverging_epoch_raises_before_anything_is_saved(mnist, tmp_path) -> None:
    profile = TINY.replace(recipe={"lr": 1e9})
    with pytest.raises(FloatingPointError, match="epoch 1") as info:
        _train(tmp_path, mnist, profile)
    assert "lower the learning rate" in str(info.value).lower() and "lr" in str(info.value)
    path = run_dir(profile, "standard", 0, tmp_path)
    assert not (path / "checkpoint.pt").exists() and not (path / METRICS).exists()
    with pytest.raises(FileNotFoundError):
        load_run(profile, "standard", runs_root=tmp_path, device=CPU)


def test_a_checkpoint_with_non_finite_weights_is_not_reused(evaluated, mnist, tmp_path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(evaluated[0], root)
    ckpt_path = run_dir(TINY, "standard", 0, root) / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    next(iter(ckpt["model"].values())).fill_(float("nan"))  # as saved by the old code
    torch.save(ckpt, ckpt_path)
    with pytest.raises(ValueError, match="non-finite weights"):
        _train(root, mnist, on_batch_end=_never)
    with pytest.raises(ValueError, match="lower lr"):
        load_run(TINY, "standard", runs_root=root, device=CPU)


def test_nan_images_are_rejected_by_attacks_and_evaluation() -> None:
    model, data = trained_small_cnn()
    x, y = data.test_tensors(8)
    x_nan = x.clone()
    x_nan[3, 0, 5, 5] = float("nan")
    for bad in (x_nan, torch.full_like(x, float("nan")), x.clone().fill_(float("inf"))):
        with pytest.raises(ValueError, match="non-finite"):
            check_batch(bad, y)
        with pytest.raises(ValueError, match="non-finite"):
            pgd(model, bad, y, epsilon=0.3, step_size=0.1, steps=1)
        with pytest.raises(ValueError, match="non-finite"):
            robustness_table(model, (bad, y), [CLEAN], sanity=False)
    check_batch(x, y)  # finite images in [0, 1] pass


@pytest.mark.parametrize("overrides,value", [
    ({"recipe": {"lr": float("inf")}}, "lr=inf"),
    ({"recipe": {"lr": float("nan")}}, "lr=nan"),
    ({"recipe": {"momentum": float("nan")}}, "momentum=nan"),
    ({"recipe": {"momentum": 1.0}}, "momentum=1.0"),
    ({"recipe": {"momentum": -0.1}}, "momentum=-0.1"),
    ({"recipe": {"weight_decay": -1e-4}}, "weight_decay=-0.0001"),
    ({"recipe": {"lr_gamma": 0.0}}, "lr_gamma=0.0"),
    ({"monitor_pgd_steps": 0}, "monitor_pgd_steps=0"),
    ({"eval": {"curve_steps": (1, 0)}}, "steps=0"),
    ({"eval": {"spsa_lr": float("inf")}}, "spsa_lr=inf"),
    ({"methods": {"adt_lr": float("nan")}}, "adt_lr=nan"),
    ({"methods": {"am_lambda": -1.0}}, "am_lambda=-1.0"),
    ({"model_kwargs": {"widht": 8}}, "widht"),
    ({"model": "wrn", "model_kwargs": {"depth": 16, "width": 4}}, "width"),
])
def test_every_profile_field_is_validated_where_the_profile_is_made(overrides, value) -> None:
    with pytest.raises(ValueError) as info:
        get_profile("smoke", **overrides)
    assert value in str(info.value)


def test_model_kwargs_errors_list_the_constructor_arguments() -> None:
    with pytest.raises(ValueError, match=r"allowed: \['width', 'hidden'\]"):
        get_profile("quick", model_kwargs={"widht": 16})
    get_profile("quick", model_kwargs={"width": 4, "hidden": 8})  # real arguments pass


# ============================================================================ 4. folders, lock


def test_a_variant_gets_a_folder_of_its_own() -> None:
    quick = get_profile("quick")
    variant = get_profile("quick", recipe={"epochs": 1})
    assert profile_folder(quick) == "quick"
    assert profile_folder(variant).startswith("quick-") and len(profile_folder(variant)) == 12
    assert run_dir(variant, "pgd_at", 0) != run_dir(quick, "pgd_at", 0)
    assert run_dir(quick, "pgd_at", 0) == Path("data/runs/quick/mnist5k/pgd_at-seed0")
    # the same overrides give the same folder; other ones another
    assert profile_folder(quick.replace(recipe={"epochs": 1})) == profile_folder(variant)
    assert profile_folder(get_profile("quick", recipe={"epochs": 2})) != profile_folder(variant)
    # settings that do not change the weights (evaluation, seeds, device) keep the folder
    assert profile_folder(quick.replace(eval={"n_examples": 10}, seeds=(0, 1))) == "quick"
    for name in PROFILES:
        assert profile_folder(get_profile(name)) == name


def test_force_retrain_of_a_variant_leaves_the_named_run_alone(mnist, tmp_path) -> None:
    smoke = get_profile("smoke")
    canonical = _train(tmp_path, mnist, smoke)
    before = _snapshot(canonical.path)
    variant = _train(tmp_path, mnist, smoke.replace(recipe={"epochs": 1, "lr": 0.01},
                                                    train_examples=64),
                     force_retrain=True)
    assert variant.path.parents[1] != canonical.path.parents[1]  # the profile folders
    assert _snapshot(canonical.path) == before
    metrics = read_json(variant.path / METRICS)
    assert metrics["variant"] and metrics["profile_folder"] == f"smoke-{metrics['variant']}"
    assert set(metrics["variant_of_named_profile"]) == {"recipe", "train_examples"}
    assert read_json(canonical.path / METRICS)["variant"] is None


_HOLDER = """
import sys, time
from adt.training.runs import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_fails_at_once_naming_the_holder(mnist, tmp_path) -> None:
    path = run_dir(TINY, "standard", 0, tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.perf_counter()
        with pytest.raises(RunLockedError, match=f"PID {holder.pid}") as info:
            _train(tmp_path, mnist, on_batch_end=_never)
        assert time.perf_counter() - started < 5  # at once, not after waiting
        assert str(path) in str(info.value)
        holder.kill()  # like kill -9: the kernel drops the lock, the stale file blocks nobody
        holder.wait(timeout=30)
        assert (path / LOCK).exists()
        run = _train(tmp_path, mnist)
        assert run.finished and not (path / LOCK).exists()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)


def test_the_lock_is_held_while_training_and_released_after(mnist, tmp_path) -> None:
    path = run_dir(TINY, "standard", 0, tmp_path)
    seen = []

    def probe(epoch: int, batch: int) -> None:
        with pytest.raises(RunLockedError, match=f"PID {os.getpid()}"), RunLock(path):
            pass
        seen.append(batch)

    _train(tmp_path, mnist, on_batch_end=probe)
    assert seen == [0, 1] and not (path / LOCK).exists()
    with RunLock(path):  # free again
        pass


# ============================================================================ 5. early, named


def test_an_unwritable_run_folder_fails_before_the_first_batch(mnist, tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder should be")
    with pytest.raises(PermissionError, match="cannot be written") as info:
        _train(blocker / "runs", mnist, on_batch_end=_never)
    assert str(blocker / "runs") in str(info.value) and "runs_root" in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_run_folder_fails_before_the_first_batch(mnist, tmp_path) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="cannot be written"):
            _train(root, mnist, on_batch_end=_never)
    finally:
        root.chmod(0o755)


def test_invalid_json_names_the_file_and_what_to_do(tmp_path, evaluated) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"artefacts": ')
    with pytest.raises(ValueError, match="bad.json is not valid JSON") as info:
        read_json(bad)
    assert "delete it" in str(info.value)
    # the manifest
    (tmp_path / MANIFEST).write_text("{")
    with pytest.raises(ValueError, match=MANIFEST) as info:
        record_artefact(tmp_path, "x", {"files": []})
    assert "git checkout" in str(info.value)
    with pytest.raises(ValueError, match=MANIFEST):
        plan_pipeline("smoke", CPU, output_dir=tmp_path)
    # a robustness table
    table = tmp_path / "eval.json"
    shutil.copyfile(evaluated[1].path / "eval.json", table)
    table.write_text(table.read_text()[:100])
    with pytest.raises(ValueError, match="eval.json is not valid JSON") as info:
        load_table(table)
    assert "evaluate_run" in str(info.value)


def test_load_run_refuses_unfinished_runs(mnist, tmp_path) -> None:
    profile = TINY.replace(recipe={"epochs": 2})

    def stop(epoch: int, batch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, mnist, profile, on_batch_end=stop)
    with pytest.raises(ValueError, match="unfinished") as info:
        load_run(profile, "standard", runs_root=tmp_path, device=CPU)
    assert "1 of 2 epochs" in str(info.value) and "allow_unfinished=True" in str(info.value)
    run = load_run(profile, "standard", runs_root=tmp_path, device=CPU, allow_unfinished=True)
    assert not run.finished and len(run.metrics["history"]) == 1


@pytest.mark.parametrize("value", [np.float32(0.3), np.float64(0.3), torch.tensor(0.3),
                                   np.array(0.3)])
def test_checks_accept_numpy_and_torch_reals(value) -> None:
    assert _checks.check_epsilon(value) == pytest.approx(0.3)
    assert _checks.check_positive(value, "lr", "0.1") == pytest.approx(0.3)
    assert isinstance(_checks.check_epsilon(value), float)


@pytest.mark.parametrize("value", [np.int64(0), np.int32(0), torch.tensor(0), np.array(0)])
def test_checks_accept_numpy_and_torch_integers(value) -> None:
    assert _checks.check_int_at_least(value, 0, "seed", "0") == 0
    assert type(_checks.check_int_at_least(value, 0, "seed", "0")) is int


@pytest.mark.parametrize("value", [True, np.bool_(True), torch.tensor(True), 1.5, "1",
                                   torch.tensor([1, 2]), None])
def test_checks_still_reject_what_is_not_an_integer(value) -> None:
    with pytest.raises(ValueError, match="must be an integer"):
        _checks.check_int_at_least(value, 0, "seed", "0")


def test_numpy_scalars_pass_through_the_public_calls(mnist, tmp_path) -> None:
    profile = get_profile("smoke", epsilon=np.float32(0.3), train_examples=np.int64(64),
                          monitor_examples=16, recipe={"batch_size": 32})
    run = _train(tmp_path, mnist, profile, seed=np.int64(0))
    assert run.finished and run.seed == 0
    model, data = trained_small_cnn()
    x, y = data.test_tensors(4)
    adv = pgd(model, x, y, epsilon=np.float32(0.3), step_size=np.float32(0.1),
              steps=np.int64(1))
    assert (adv - x).abs().max() <= 0.3 + 1e-6


@pytest.mark.parametrize("argv,option", [
    (["--repeats", "0"], "--repeats"), (["--steps", "0"], "--steps"),
    (["--warmup", "-1"], "--warmup"), (["--batch-size", "0"], "--batch-size"),
    (["--width", "0"], "--width"), (["--profile", "nope"], "--profile"),
])
def test_bench_validates_its_arguments(argv, option, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        bench.main(["--device", "cpu", *argv])
    assert info.value.code == 2
    assert option in capsys.readouterr().err


def test_bench_functions_validate_their_counts() -> None:
    for kwargs, message in ((dict(repeats=0), "repeats=0"), (dict(warmup=-1), "warmup=-1"),
                            (dict(steps=0), "steps=0")):
        with pytest.raises(ValueError, match=message):
            costs.time_call(lambda: None, torch.device(CPU), **{"warmup": 0, "steps": 1,
                                                               "repeats": 1, **kwargs})


# ============================================================================ 6. other findings


def test_the_temporary_output_folder_is_per_checkout(tmp_path) -> None:
    folder = default_output_dir("smoke", temporary=True)
    assert folder.name == f"adt-smoke-{checkout_tag()}"
    assert checkout_tag(tmp_path / "a") != checkout_tag(tmp_path / "b")
    assert checkout_tag() == checkout_tag(REPO_ROOT)
    assert default_output_dir("quick") == REPO_ROOT / "figures"


@pytest.mark.parametrize("extra", [[], ["--attacks"], ["--output", "none"]])
def test_bench_writes_files_only_when_asked(extra, monkeypatch, tmp_path, capsys) -> None:
    written = []
    monkeypatch.setattr(bench, "_write", lambda result, output: written.append(output))
    monkeypatch.setattr(bench, "benchmark_training",
                        lambda *a, output, **k: written.append(output) if output else None)
    monkeypatch.setattr(bench, "benchmark_attacks", lambda *a, **k: {
        "steps": 1, "ours_images_per_second": 1.0, "torchattacks_images_per_second": 1.0,
        "speedup": 1.0})
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--device", "cpu", *extra]) == 0
    assert written == [] and not (tmp_path / "benchmarks").exists()
    attacks = [e for e in extra if e == "--attacks"]
    assert bench.main(["--device", "cpu", *attacks, "--output", "x.json"]) == 0
    assert written == [Path("x.json")]


def test_the_docs_state_the_thread_count_of_exactness() -> None:
    text = " ".join((ROOT / "docs" / "reproducibility.md").read_text().split())
    assert "On one CPU at one thread count a run is bit-identical" in text
    assert "8e-3" in text  # 1 vs 2 threads
    assert "ONEDNN_MAX_CPU_ISA=SSE41" in text and "2.93" in text  # across kernel paths
