"""Adversarial Distributional Training (Dong et al., NeurIPS 2020): the compute core.

The subpackages read as the paper's pipeline, from the bottom up: ``core`` (checks, files,
runtime, datasets, models, losses and the l_inf ball); side by side, ``method`` (the
tanh-Gaussian, the inner maximisers, the method registry) and ``attack`` (the attack
functions, a table's row, the protocol's catalogue of attacks); ``config`` (profiles,
provenance); ``training`` (Algorithm 1, run folders, resume, DDP, sweeps); ``evaluation``
(the protocol, the robustness table and its checks, stored tables, checkpoint files); and
on top, side by side, ``study`` (statistics, gates, claims, analyses, figures) and
``artifact`` (the notebooks' context, the papermill batch, benchmarks). See
REPRODUCTION.md for the release's settings this package follows.

The names a user needs are here (imported on first use, so ``import adt`` stays light).
On your own classifier and batches (the documented way; ``adt.train`` trains a profile's
runs)::

    import adt
    maximizer = adt.ExplicitADT(epsilon=0.3, steps=7, num_samples=5, lambda_=0.01)
    for x, y in batches:                               # images in [0, 1], labels
        adt.train_step(model, maximizer, optimizer, x, y)   # Algorithm 1, one iteration
    x_adv = adt.pgd(model, x, y, epsilon=0.3, step_size=0.075, steps=20)
    table = adt.robustness_table(model, (x, y), attacks)    # any classifier, plain tensors

On the artifact's profiles::

    run = adt.train("quick", "adt_exp", seed=0)      # or adt.load_run(...)
    table = adt.evaluate_run(run)                     # the profile's protocol, eval.json

A committed model by name (docs/models.md lists them; read from ``data/archive/``)::

    model = adt.load_model("quick", "adt_exp", seed=3, epochs=16)   # eval mode
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it (and the name there, when it differs)
_EXPORTS: dict[str, str | tuple[str, str]] = {
    "get_profile": "adt.config.profiles",
    "PROFILES": "adt.config.profiles",
    "Profile": "adt.config.profiles",
    "METHODS": "adt.method.methods",
    "METHOD_REGISTRY": ("adt.method.methods", "REGISTRY"),
    "Method": "adt.method.methods",
    "register_method": "adt.method.methods",
    "LABELS": "adt.method.methods",
    "MethodSettings": "adt.method.methods",
    "build_maximizer": "adt.method.methods",
    "load_dataset": "adt.core.data",
    "train": "adt.training.loop",
    "load_run": "adt.training.modules",
    "Run": "adt.training.runs",
    "evaluate_run": "adt.evaluation.stored",
    "robustness_table": "adt.evaluation.engine",
    "standard_attacks": "adt.evaluation.protocol",
    "load_checkpoint": "adt.evaluation.checkpoints",
    # the committed model zoo (data/archive/, docs/models.md): by name, and the list
    "load_model": "adt.evaluation.checkpoints",
    "archived_models": "adt.training.archive",
    "evaluate_checkpoint": "adt.evaluation.cli",
    # the inner maximisers, usable on any classifier and batch, and one training step
    "InnerMaximizer": "adt.method.inner",
    "AdversarialBatch": "adt.method.inner",
    "Clean": "adt.method.inner",
    "PGD": "adt.method.inner",
    "TRADES": "adt.method.inner",
    "ExplicitADT": "adt.method.explicit",
    "AmortizedExplicitADT": "adt.method.amortized",
    "AmortizedImplicitADT": "adt.method.amortized",
    "train_step": "adt.training.loop",
    # the attacks (model, x, y, **settings) -> x_adv, and a table's row
    "fgsm": "adt.attack.functions",
    "pgd": "adt.attack.functions",
    "mim": "adt.attack.functions",
    "cw": "adt.attack.functions",
    "fea_attack": "adt.attack.functions",
    "autoattack": "adt.attack.functions",
    "original_autoattack": "adt.attack.functions",
    "square": "adt.attack.functions",
    "spsa": "adt.attack.functions",
    "transfer": "adt.attack.functions",
    "AttackSpec": "adt.attack.spec",
    "white_box_attacks": "adt.evaluation.protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'adt' has no attribute {name!r}")
    module, attribute = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
