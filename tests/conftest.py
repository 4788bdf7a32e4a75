"""Shared fixtures and helpers of the test suite.

* :func:`_one_thread` (autouse, per module): every test module runs with one intra-op
  thread, the previous count restored afterwards;
* :func:`trained_small_cnn`: the one small trained classifier of the attack, evaluation
  and inner-maximiser tests, trained once per set of arguments per test process;
* :class:`Quantized` (gradient masking by construction) and :class:`Recorder` (records
  every forward call of a classifier);
* :func:`pytest_xdist_make_scheduler` and :func:`_share_the_cores`: ``pytest -n N``
  (pytest-xdist, as ``make test`` runs the suite on every core).

Test modules import the helpers with ``from conftest import ...`` (``tests/`` is on
``sys.path`` under pytest's default import mode).
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adt.core.data import ImageDataset, load_dataset
from adt.core.models import SmallCNN

#: When this test process started (before any notebook ran under nbval in the same session).
SESSION_STARTED = time.time()
#: The xdist work unit of the notebooks (nbval) and of the tests that read their outputs.
NOTEBOOKS_UNIT = "notebooks"
PIPELINE_TESTS = "tests/test_pipeline.py"
#: The fixture of tests/test_pipeline.py that hands a test the notebooks' outputs.
NOTEBOOK_OUTPUTS = "smoke"


@functools.cache
def _reading_notebook_outputs() -> frozenset[str]:
    """The tests of tests/test_pipeline.py that take :data:`NOTEBOOK_OUTPUTS` (read from the
    source: the scheduler sees node ids only)."""
    import ast

    tree = ast.parse((Path(__file__).parent / Path(PIPELINE_TESTS).name).read_text())
    return frozenset(f.name for f in tree.body if isinstance(f, ast.FunctionDef)
                     and any(a.arg == NOTEBOOK_OUTPUTS for a in f.args.args))


def work_unit(nodeid: str) -> str:
    """The work unit of a test under ``pytest -n N --dist load`` (pytest-xdist, as ``make
    test`` runs the suite): the test alone, but for :data:`NOTEBOOKS_UNIT`, which joins the
    notebooks' cells (nbval) and the tests of ``tests/test_pipeline.py`` that read what the
    notebooks wrote to ``ADT_OUTPUT_DIR`` (those taking its ``smoke`` fixture)."""
    path, _, rest = nodeid.partition("::")
    if re.search(r"(\.|::)ipynb$", path) or rest.startswith("ipynb::"):  # pytest 9 shows
        return NOTEBOOKS_UNIT                                       # a.ipynb as a::ipynb
    if path == PIPELINE_TESTS and re.split(r"[\[:]", rest)[0] in _reading_notebook_outputs():
        return NOTEBOOKS_UNIT
    return nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist load`` with one indivisible unit (:func:`work_unit`): one worker runs the
    notebooks' cells in collection order (each notebook in its kernel, chapter after chapter:
    a later chapter reads an earlier one's runs and results), then tests/test_pipeline.py,
    which thus sees every notebook's outputs; meanwhile the other workers take the other
    tests one at a time in collection order, so each worker meets a module's tests together
    and builds its module-scoped fixtures once. (xdist's ``loadgroup`` cannot join them under
    pytest 9: it renames the items through an attribute pytest 9 no longer reads.) Any other
    ``--dist``: xdist's own scheduling."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksAsOneUnit(LoadScopeScheduling):  # units by size (the notebooks' first)
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return NotebooksAsOneUnit(config, log)


def _share_the_cores() -> None:
    """Under ``pytest -n N`` each worker gets its share of the cores, for its own torch and,
    through ``OMP_NUM_THREADS``, for the processes it starts (the notebooks' kernels, the
    workers of the pipeline tests): N workers that each spread over every core only contend."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread for the whole module, the previous count restored afterwards.

    The tensors and models of the tests are tiny: on a shared 2-core machine a second
    OpenMP thread mostly spins, and thread hand-offs cost far more than the arithmetic
    (an input gradient of the smoke SmallCNN takes ~13 ms on one thread, 60-400 ms on two
    under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def trained_small_cnn(n_train: int | None = None, epochs: int = 1, lr: float = 0.05,
                      seed: int = 0) -> tuple[nn.Module, ImageDataset]:
    """A SmallCNN(width=8, hidden=32) trained with SGD (momentum 0.9, batches of 64) on the
    first ``n_train`` training images of mnist5k (None: all 4,000) for ``epochs`` epochs, in
    eval mode, and the data it was trained on (the test split whole).

    The weights are seeded with ``seed``, epoch ``e`` visits the images in the order of
    batch seed ``seed + e``; training runs on its own random stream (the global one is
    untouched). Cached per arguments: tests must not change the model (restore any mode
    they set). The defaults (one epoch, lr 0.05, about 80-90 % clean accuracy) serve the
    attack and evaluation tests; ``(2048, 2, 0.02)`` the inner-maximiser tests.
    """
    data = load_dataset("mnist5k")
    if n_train is not None:
        data = data.subset(train=n_train)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SmallCNN(width=8, hidden=32)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        model.train()
        for epoch in range(epochs):
            for x, y in data.batches("train", 64, shuffle=True, seed=seed + epoch):
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval(), data


class Quantized(nn.Module):
    """Gradient masking by construction: the input is quantised to ``levels`` levels with
    torch.round, whose gradient is zero, so every gradient attack sees a flat loss while
    the model itself stays as (non-)robust as the one inside (at eps = 0.3 a perturbation
    easily crosses a level of 1/8)."""

    def __init__(self, model: nn.Module, levels: int = 8) -> None:
        super().__init__()
        self.model = model
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


class Recorder(nn.Module):
    """Wraps a classifier and records, for every forward call, the wrapper's mode, the
    wrapped model's mode and the batch size. ``fail_at=n`` raises on the n-th call."""

    def __init__(self, inner: nn.Module, fail_at: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.fail_at = fail_at
        self.calls: list[tuple[bool, bool, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, self.inner.training, len(x)))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise RuntimeError("failure injected by the test")
        return self.inner(x)

    @property
    def sizes(self) -> list[int]:
        return [n for _, _, n in self.calls]

    @property
    def modes(self) -> list[bool]:
        return [outer or inner for outer, inner, _ in self.calls]


def synthetic_notebook(*sources: str) -> Any:
    """A notebook whose first cell is the papermill ``parameters`` cell of the artifact's
    (profile, device, output_dir, force_retrain), then one code cell per source."""
    import nbformat

    parameters = ("profile = 'quick'\ndevice = 'auto'\noutput_dir = None\n"
                  "force_retrain = False")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        *(nbformat.v4.new_code_cell(s) for s in sources)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


def recording_notebook(name: str, *more: str) -> Any:
    """A synthetic notebook that writes ``<name>.txt`` into the output folder and lists it
    in the manifest (no torch), then runs ``more`` cells."""
    return synthetic_notebook(
        "from pathlib import Path\n"
        "from adt.config.provenance import record_artefact\n"
        f"Path(output_dir, '{name}.txt').write_text(profile + ' ' + device)\n"
        f"record_artefact(output_dir, '{name}', {{'kind': 'table', 'files': ['{name}.txt'],\n"
        f"                'notebook': 'notebooks/{name}.ipynb', 'profile': profile}})", *more)


def randomised(model: nn.Module, seed: int = 0, bias_scale: float = 0.1) -> nn.Module:
    """``model`` in eval mode with non-trivial BatchNorm statistics and affine parameters
    and random Linear biases (std ``bias_scale``), so its outputs depend on every tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.out_features, generator=g) * bias_scale)
    return model.eval()
