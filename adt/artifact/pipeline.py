"""Regenerate every table and figure: run the notebooks (the chapters) in order with papermill.

    python -m adt.pipeline --profile quick --device auto      # what `make reproduce` runs

The batch is transactional: the profile, the device, the notebooks and the folders are
checked before anything is touched; the notebooks execute into a temporary folder, and
their figures, tables and executed copies move into place only when every notebook has
succeeded (the manifest is merged: entries of notebooks outside the batch stay). A failing
cell or Ctrl-C stops the batch, leaves every file as it was and says so. Executed notebooks
go back into ``notebooks/`` only under the committed profile (``quick``), else to
``<output>/notebooks/`` (or ``--executed-dir``), without papermill's injected cell
(:func:`clean_executed`). Finished runs (``data/runs/``, ``data/archive/``) are reused unless
``--retrain-chapters`` (``--force-retrain``): the chapters' runs, not the budget study's.
The model card ``docs/models.md`` follows the archive (:mod:`adt.artifact.model_card`).
Progress: jobs done in the CPU stage (:mod:`adt.artifact.prepare`), then the notebook and
its cell, elapsed and ETA; none with ``--no-progress`` or ``ADT_PROGRESS=0``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adt.artifact.plan import COMMITTED_NOTEBOOKS, DEVICES, NOTEBOOKS, PipelinePlan, plan_pipeline
from adt.config.provenance import (
    COMMITTED_PROFILE,
    MANIFEST,
    PROFILE_NAMES,
    REPO_ROOT,
    check_fresh,
    checkout_tag,
    code_hashes,
    default_output_dir,
    environment,
    merge_manifests,
    read_manifest,
    record_batch,
)
from adt.core.io import atomic_write, write_json

__all__ = ["run_pipeline", "PipelineError", "PipelineInterrupted", "clean_executed", "main"]


class PipelineError(RuntimeError):
    """A notebook cell failed; the message names the notebook and the cell."""


class PipelineInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the batch; nothing was moved into place."""


def clean_executed(path: str | Path) -> None:
    """Make an executed notebook fit to commit and to run again under nbval: papermill's
    injected-parameters cell is dropped (the notebook's own ``parameters`` cell rules when
    it runs again; the profile stays in the metadata and every caption), absolute paths,
    timings and widget state leave the metadata, execution counts are renumbered 1, 2, ..."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells
                if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    count = 0
    for c in nb.cells:
        for key in ("papermill", "execution"):
            c.get("metadata", {}).pop(key, None)
        if c.get("cell_type") == "code" and c.get("execution_count") is not None:
            count += 1  # consecutive again once the injected cell is gone
            c["execution_count"] = count
            for output in (o for o in c.get("outputs", []) if "execution_count" in o):
                output["execution_count"] = count
    nb.metadata.pop("widgets", None)  # progress-bar widget state: noise in a static viewer
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path", "start_time", "end_time", "duration"):
        meta.pop(key, None)
    meta.get("parameters", {}).pop("output_dir", None)
    nbformat.write(nb, path)


@contextmanager
def _on_sigint(handler: Any) -> Iterator[None]:
    """Ctrl-C calls ``handler(signum, frame)`` inside (in the main thread; else no change)."""
    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _sigint_deferred(state: dict[str, bool]) -> Iterator[None]:
    """Hold Ctrl-C back during a short step that must not stop half-way (moving results
    into place, moving the runs folder back); ``state['deferred']`` says it came."""
    with _on_sigint(lambda signum, frame: state.__setitem__("deferred", True)):
        yield


@contextmanager
def _sigint_raises() -> Iterator[dict[str, bool]]:
    """While the batch runs, Ctrl-C raises :class:`PipelineInterrupted` in this process and
    is remembered (``state['interrupted']``), even when a library swallows the exception."""
    state = {"interrupted": False}

    def handler(signum: int, frame: Any) -> None:
        state["interrupted"] = True
        raise PipelineInterrupted

    with _on_sigint(handler):
        yield state


def _keep_failed(executed: Path) -> Path:
    """A copy of a failed executed notebook in this checkout's temporary folder."""
    kept = Path(tempfile.gettempdir()) / f"adt-failed-{checkout_tag()}" / executed.name
    kept.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(executed, kept))


def _execute(plan: PipelinePlan, staged_out: Path, staged_nb: Path, force_retrain: bool,
             log_output: bool, state: dict[str, bool], progress: bool = False
             ) -> dict[str, float]:
    """Execute the batch into the staging folders; returns the seconds per notebook (a line
    each; with ``progress``, the cell, elapsed and ETA: ``NotebookProgress``)."""
    import papermill as pm

    from adt.artifact.batch_progress import NotebookProgress

    timings: dict[str, float] = {}
    shown = NotebookProgress(plan.notebooks, read_manifest(plan.output).get(
        "notebook_seconds", {}), progress)
    os.environ["ADT_PROGRESS"] = "0"  # the kernels inherit it: no bar widgets in the outputs
    try:
        for k, name in enumerate(plan.notebooks):
            shown.start(k, f"profile {plan.profile}, device {plan.device}")
            executed = staged_nb / f"{name}.ipynb"
            try:
                pm.execute_notebook(
                    str(plan.source / f"{name}.ipynb"), str(executed),
                    parameters={"profile": plan.profile, "device": plan.device,
                                "output_dir": str(staged_out), "force_retrain": force_retrain},
                    cwd=str(plan.source), progress_bar=False, log_output=log_output,
                    **shown.engine_kwargs(name))
            except pm.PapermillExecutionError as err:
                if state["interrupted"] or err.ename == "KeyboardInterrupt":
                    raise PipelineInterrupted from err
                kept = _keep_failed(executed) if executed.is_file() else executed
                raise PipelineError(f"{plan.source.name}/{name}.ipynb failed in cell "
                                    f"{err.cell_index} (execution count {err.exec_count}): "
                                    f"{err.ename}: {err.evalue}. The executed notebook with "
                                    f"the traceback is {kept}") from err
            except Exception as err:  # e.g. the kernel died of the Ctrl-C it received too
                if state["interrupted"]:
                    raise PipelineInterrupted from err
                raise
            if state["interrupted"]:  # Ctrl-C reached the kernel only, or was swallowed
                raise PipelineInterrupted
            clean_executed(executed)
            timings[name] = round(shown.finish(k), 1)
    finally:
        shown.close()
    return timings


def _copy_atomically(source: Path, destination: Path) -> None:
    atomic_write(destination, lambda f: f.write(source.read_bytes()))


def _seed(plan: PipelinePlan, staged_out: Path) -> None:
    """Let a partial batch see the outputs of the notebooks outside it (a later chapter may
    check or reuse them): their manifest entries (those the final merge keeps) and files
    are copied into the staging folder first."""
    kept = merge_manifests(read_manifest(plan.output), {}, plan.notebooks)["artefacts"]
    for entry in kept.values():
        for rel in entry.get("files", []):
            if (plan.output / rel).is_file():
                _copy_atomically(plan.output / rel, staged_out / rel)
    write_json({"artefacts": kept}, staged_out / MANIFEST)


def _install(plan: PipelinePlan, staged_out: Path, staged_nb: Path) -> Path:
    """Move a successful batch into place: artefacts, the merged manifest (last), the
    executed notebooks. Returns the manifest's path."""
    for path in sorted(staged_out.rglob("*")):
        rel = path.relative_to(staged_out)
        if path.is_file() and rel.parts[0] != "runs" and rel != Path(MANIFEST):
            _copy_atomically(path, plan.output / rel)
    manifest_path = write_json(merge_manifests(read_manifest(plan.output), read_manifest(
        staged_out), plan.notebooks), plan.output / MANIFEST)
    for name in plan.notebooks:
        _copy_atomically(staged_nb / f"{name}.ipynb", plan.target / f"{name}.ipynb")
    return manifest_path


@contextmanager
def _staging(plan: PipelinePlan, state: dict[str, bool]) -> Iterator[tuple[Path, Path]]:
    """Temporary folders for the artefacts and the executed notebooks, removed afterwards.
    Under a temporary profile the notebooks keep their runs in ``<output>/runs``: moved into
    the staging folder (a sibling, so a rename) for the batch and back, whatever happens."""
    if plan.runs_in_output:
        plan.output.parent.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f".{plan.output.name}.staging-",
                                     dir=plan.output.parent))
    else:
        root = Path(tempfile.mkdtemp(prefix=f"adt-pipeline-{plan.profile}-"))
    staged_out, staged_nb = root / "output", root / "notebooks"
    staged_out.mkdir()
    staged_nb.mkdir()
    runs = plan.output / "runs"
    if plan.runs_in_output and runs.is_dir():
        os.rename(runs, staged_out / "runs")
    try:
        yield staged_out, staged_nb
    finally:
        with _sigint_deferred(state):
            if plan.runs_in_output and (staged_out / "runs").is_dir() and not runs.exists():
                plan.output.mkdir(parents=True, exist_ok=True)
                os.rename(staged_out / "runs", runs)
            shutil.rmtree(root, ignore_errors=True)


def _prepare(plan: PipelinePlan, workers: int | None, force_retrain: bool,
             progress: bool = False, measured: dict[str, float] | None = None) -> bool:
    """Run :func:`adt.artifact.prepare.prepare` when it helps (a CPU, 2+ workers, runs in
    ``data/runs``, the repository's own chapters), returning whether it ran; ``measured``
    gets :func:`~adt.artifact.batch_progress.kept_rates` for the manifest."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    if plan.runs_in_output or workers < 2 or plan.source.resolve() != COMMITTED_NOTEBOOKS:
        return False
    from adt.artifact.batch_progress import kept_rates, prepare_prior
    from adt.artifact.prepare import prepare
    from adt.config.profiles import get_profile
    from adt.core.runtime import resolve_device

    prof = get_profile(plan.profile)
    if resolve_device(plan.device if plan.device != "auto" else prof.device).type != "cpu":
        return False
    print(f"[adt.prepare] training and evaluating the runs of {plan.profile!r} in {workers} "
          "one-thread processes", flush=True)
    prior, rates = prepare_prior(plan.profile, read_manifest(plan.output)), {}
    seconds = prepare(prof, REPO_ROOT / "data" / "runs", workers, force_retrain,
                      progress=progress, prior=prior, rates=rates)
    if measured is not None:
        measured.update(kept_rates(prior, rates))
    print("[adt.prepare] done: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
          flush=True)
    return True


def check_paths(output_dir: str | Path | None = None, executed_dir: str | Path | None = None,
                notebooks_dir: str | Path | None = None) -> None:
    """The folders of a batch, checked before any work (a ValueError names the folder): the
    notebooks' folder exists; a probe file can be made where the others go."""
    if notebooks_dir is not None and not Path(notebooks_dir).is_dir():
        what = "is a file, not a folder" if Path(notebooks_dir).exists() else "does not exist"
        raise ValueError(f"--notebooks-dir {notebooks_dir} {what}; give the folder of the "
                         f"notebooks ({', '.join(NOTEBOOKS)}), e.g. notebooks/")
    for path, option in ((output_dir, "--output-dir"), (executed_dir, "--executed-dir")):
        where = Path(path or ".").absolute()
        existing = next(p for p in (where, *where.parents) if p.exists())
        try:
            if path:
                tempfile.TemporaryFile(dir=existing).close()  # a probe: leaves nothing behind
        except OSError as err:
            raise ValueError(f"{option} {path} cannot be written ({err.strerror or err}: "
                             f"{existing}); give a folder you can write, e.g. /tmp/adt-out"
                             ) from None


def run_pipeline(profile: str = COMMITTED_PROFILE, device: str = "auto",
                 output_dir: str | Path | None = None, executed_dir: str | Path | None = None,
                 force_retrain: bool = False, notebooks: tuple[str, ...] = NOTEBOOKS,
                 log_output: bool = False, notebooks_dir: str | Path | None = None,
                 workers: int | None = 0, progress: bool = False) -> Path:
    """Execute ``notebooks`` (names in ``notebooks_dir``, default ``notebooks/``) in order
    and, once all have succeeded, move their results into place (:func:`plan_pipeline`
    says where); return the merged manifest's path. A failing cell raises
    :class:`PipelineError`, Ctrl-C :class:`PipelineInterrupted`: nothing is moved then.

    On a CPU, a committed profile's runs are first trained and evaluated in ``workers``
    one-thread processes (:mod:`adt.artifact.prepare`; None: one per core, the command
    line's default; 0 or 1: none); the notebooks reuse them. The manifest records the
    batch; the README's and REPRODUCTION's blocks follow the committed outputs
    (:func:`adt.artifact.readme.write_blocks`), the model card the archive.
    ``force_retrain``: the chapters' runs, announced with the hours expected
    (:func:`adt.artifact.model_card.retrain_plan`)."""
    check_paths(output_dir, executed_dir, notebooks_dir)
    plan = plan_pipeline(profile, device, output_dir, executed_dir, notebooks, notebooks_dir)
    if force_retrain:
        from adt.artifact.model_card import retrain_plan
        print(*retrain_plan(plan.profile, workers), sep="\n", flush=True)
    with _sigint_raises() as state, _staging(plan, state) as (staged_out, staged_nb):
        measured: dict[str, float] = {}
        if _prepare(plan, workers, force_retrain, progress, measured):
            force_retrain = False  # retrained just now, by adt.artifact.prepare
        _seed(plan, staged_out)
        timings = _execute(plan, staged_out, staged_nb, force_retrain, log_output, state,
                           progress)
        record_batch(staged_out, profile=plan.profile, device=plan.device,
                     notebook_seconds=timings, environment=environment(),
                     **({"prepare_seconds_per_cost": measured} if measured else {}),
                     code=code_hashes(plan.source, plan.notebooks, executed_dir=staged_nb))
        with _sigint_deferred(state):
            manifest_path = _install(plan, staged_out, staged_nb)
            if plan.output == default_output_dir(COMMITTED_PROFILE):  # README, REPRODUCTION
                from adt.artifact.model_card import write_model_card
                from adt.artifact.readme import write_blocks
                write_blocks(figures_dir=plan.output)
                write_model_card()  # docs/models.md: the committed archive
    if state.get("deferred"):
        print("[adt.pipeline] Ctrl-C came while the finished batch was moved into place; it "
              "was completed first", file=sys.stderr)
    print(f"[adt.pipeline] {len(read_manifest(plan.output)['artefacts'])} artefacts listed in "
          f"{manifest_path}; executed notebooks in {plan.target}")
    return manifest_path


def _report_freshness(output_dir: str | None, notebooks_dir: str | None) -> int:
    from adt.artifact.model_card import stale_model_card
    from adt.artifact.readme import stale_blocks

    problems = check_fresh(Path(output_dir) if output_dir else None,
                           Path(notebooks_dir) if notebooks_dir else None)
    problems += stale_blocks() + stale_model_card() if output_dir is None else []
    for problem in problems:
        print(f"[adt.pipeline] stale: {problem}")
    if problems:
        print(f"[adt.pipeline] {len(problems)} problem(s): the committed outputs are not those of "
              "the tree; run `make reproduce` and delete each orphan named above", file=sys.stderr)
        return 1
    print("[adt.pipeline] fresh: the committed figures, tables, notebooks and docs/models.md "
          "are those of the code and archive in the tree, and the manifest lists every file")
    return 0


def _parser() -> argparse.ArgumentParser:
    from adt.artifact.model_card import RETRAIN_HELP
    from adt.core.commands import add_progress, add_workers, command_parser

    parser = command_parser("pipeline", __doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=COMMITTED_PROFILE, choices=PROFILE_NAMES,
                        help="the profile whose tables and figures are regenerated")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="where the notebooks train and attack (auto: the profile's)")
    parser.add_argument("--output-dir", default=None, help="artefacts' folder (default: the "
                        "profile's)")
    parser.add_argument("--executed-dir", default=None,
                        help="executed notebooks' folder (default: notebooks/ for "
                             f"{COMMITTED_PROFILE!r}, <output>/notebooks otherwise)")
    parser.add_argument("--notebooks-dir", default=None, help="run the notebooks of this "
                        "folder instead of notebooks/ (default: notebooks/)")
    parser.add_argument("--retrain-chapters", "--force-retrain", dest="force_retrain",
                        action="store_true", help=RETRAIN_HELP)
    add_workers(parser, "on a CPU, train and evaluate the runs first in this many one-thread "
                        "processes (python -m adt.prepare); 0: no worker processes, the notebooks "
                        "train and evaluate the runs themselves (1 too: slower than threads)")
    parser.add_argument("--check-fresh", action="store_true", help="run nothing; say whether "
                        "the committed figures, tables, notebooks and docs/models.md are those "
                        "of the code and archive in the tree, every file in its manifest "
                        "(exit 1 if not)")
    parser.add_argument("--notebooks", nargs="*", default=list(NOTEBOOKS), metavar="NAME",
                        help="names, in order")
    add_progress(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m adt.pipeline``: bad input is refused before anything is touched (exit 2),
    a failing notebook is exit code 1, Ctrl-C 130."""
    args = _parser().parse_args(argv)
    if args.check_fresh:
        return _report_freshness(args.output_dir, args.notebooks_dir)
    try:
        run_pipeline(args.profile, args.device, args.output_dir, args.executed_dir,
                     args.force_retrain, tuple(args.notebooks), log_output=True,
                     notebooks_dir=args.notebooks_dir, workers=args.workers,
                     progress=args.progress)
    except ValueError as err:
        print(f"python -m adt.pipeline: error: {err}", file=sys.stderr)
        return 2
    except PipelineError as err:
        print(f"[adt.pipeline] FAILED: {err}\n[adt.pipeline] nothing was moved into place: "
              "the notebooks, figures and manifest are as they were", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[adt.pipeline] interrupted (Ctrl-C): stopped; the notebooks, figures and manifest "
              "are as they were (finished training epochs resume next time)", file=sys.stderr)
        return 130
    return 0

