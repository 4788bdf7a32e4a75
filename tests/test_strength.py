"""Evaluation strength: AutoAttack as the original cascade, masking checks that fire on mild
masking, refusal of randomised models, and captions that say what ran."""

from __future__ import annotations

import pytest
import torch
from conftest import trained_small_cnn
from torch import nn

from adt.attacks import autoattack, autoattack_parts, fgsm
from adt.evaluate import RandomizedModelError, robustness_table
from adt.profiles import EvalSettings
from adt.protocol import (
    CLEAN,
    AttackSpec,
    autoattack_specs,
    describe_protocol,
    full_autoattack,
    white_box_attacks,
)
from adt.sanity import SanityChecks, pgd_close_to_autoattack
from adt.table import RobustnessTable

EPS = 0.3


def test_the_full_protocol_is_the_original_autoattack() -> None:
    """Croce & Hein's "standard" AutoAttack: APGD-CE and APGD-T (9 targets), FAB-T (9
    targets), 100 iterations and one restart each, then Square with 5000 queries."""
    apgd, apgdt, fab, sq = autoattack_parts(nn.Linear(2, 10), epsilon=8 / 255)
    assert (type(apgd).__name__, apgd.loss, apgd.steps, apgd.n_restarts, apgd.thr_decr) == (
        "APGD", "ce", 100, 1, 0.75)
    assert (type(apgdt).__name__, apgdt.n_target_classes, apgdt.steps, apgdt.n_restarts) == (
        "APGDT", 9, 100, 1)
    assert (type(fab).__name__, fab.multi_targeted, fab.n_target_classes, fab.steps,
            fab.n_restarts, fab.alpha_max, fab.eta, fab.beta) == ("FAB", True, 9, 100, 1, 0.1,
                                                                  1.05, 0.9)
    assert (type(sq).__name__, sq.n_queries, sq.p_init, sq.n_restarts, sq.loss) == (
        "Square", 5000, 0.8, 1, "margin")
    assert all(p.norm == "Linf" and p.eps == 8 / 255 for p in (apgd, apgdt, fab, sq))
    gradient, cascade = full_autoattack(8 / 255, 10)
    assert gradient.settings == {"epsilon": 8 / 255, "version": "gradient", "num_classes": 10,
                                 "steps": 100, "targets": 9}
    assert cascade.settings == {"epsilon": 8 / 255, "queries": 5000}
    assert cascade.survivors_of == gradient.name and cascade.score_based


def test_the_runner_cascade_equals_torchattacks_cascade() -> None:
    """Our two AutoAttack rows (gradient attacks, then Square on their survivors) give the
    same per-example result as torchattacks' MultiAttack over the same four attacks."""
    model, data = trained_small_cnn()
    x, y = data.test_tensors(24)
    settings = EvalSettings(autoattack_steps=5, autoattack_targets=2, square_queries=30)
    specs = list(autoattack_specs(settings, EPS, 10))
    table = robustness_table(model, (x, y), specs, batch_size=24, sanity=False)
    x_adv = autoattack(model, x, y, epsilon=EPS, version="standard", steps=5, targets=2,
                       square_queries=30)
    with torch.no_grad():
        direct = model(x_adv).argmax(1) == y
    assert torch.equal(table.row("AutoAttack") & table.row("Clean"), direct)


class PartlyMasked(nn.Module):
    """Mild gradient masking: the same function as ``model``, but inputs whose top-left
    pixel is above 0.5 (marked images; +-0.3 cannot cross it) pass no gradient. Gradient
    attacks see a flat loss on the marked images only; a score-based attack does not care."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marked = (x[:, :, 0, 0] > 0.5).flatten()
        return torch.where(marked[:, None], self.model(x.detach()), self.model(x))


def test_mild_masking_is_flagged_and_a_rob_includes_square() -> None:
    model, data = trained_small_cnn()
    x, y = data.test_tensors(48)
    x = x.clone()
    x[:16, :, 0, 0] = 1.0  # the first 16 images are masked
    settings = EvalSettings(pgd_steps=(5, 10), mim_steps=5, cw_steps=5, fea_steps=5,
                            fea_targets=2, autoattack="cheap", autoattack_steps=10,
                            autoattack_targets=2, square_queries=500, sanity_restarts=2)
    attacks = white_box_attacks(settings, EPS)
    masked_model = PartlyMasked(model).eval()
    with pytest.warns(UserWarning, match="score_only"):
        table = robustness_table(masked_model, (x, y), attacks, batch_size=48,
                                 sanity=SanityChecks.from_settings(settings, EPS))
    check = next(c for c in table.checks if c.name == "score_only[AutoAttack]")
    assert check.failed and check.values["count"] >= 5
    assert set(check.values["examples"]) <= set(range(16))  # only masked images
    gradient_rows = [s["name"] for s in table.specs
                     if s["kind"] in ("clean", "white") and not s["score_based"]]
    gradient_only = float(table.worst_case(gradient_rows).float().mean())
    assert table.robust_accuracy < gradient_only  # Square lowers A_rob ...
    everything = table.worst_case(table.names_of("clean", "white"))
    assert table.robust_accuracy == float(everything.float().mean())  # ... and A_rob holds it


def test_an_unmasked_model_passes_the_new_checks() -> None:
    model, data = trained_small_cnn()
    x, y = data.test_tensors(48)
    settings = EvalSettings(pgd_steps=(5, 10), mim_steps=5, cw_steps=5, fea_steps=5,
                            fea_targets=2, autoattack="cheap", autoattack_steps=10,
                            autoattack_targets=2, square_queries=200, sanity_restarts=2)
    table = robustness_table(model, (x, y), white_box_attacks(settings, EPS), batch_size=48,
                             sanity=SanityChecks.from_settings(settings, EPS))
    statuses = {c.name: c.status for c in table.checks}
    assert statuses["score_only[AutoAttack]"] == "passed"
    assert statuses["pgd_vs_autoattack[AutoAttack]"] == "passed"


def _gap_table(pgd_correct: int, autoattack_correct: int, n: int = 100) -> RobustnessTable:
    specs = [CLEAN.describe(), AttackSpec("PGD-100", lambda *a: a[1]).describe(),
             AttackSpec("AutoAttack", lambda *a: a[1], survivors_of="PGD-100").describe()]
    correct = torch.zeros(3, n, dtype=torch.bool)
    correct[0] = True
    correct[1, :pgd_correct] = True
    correct[2, :autoattack_correct] = True
    return RobustnessTable(specs, correct, [n] * 3, [0.0] * 3)


@pytest.mark.parametrize(("pgd", "auto", "failed"), [(80, 70, True), (80, 76, False)])
def test_a_large_gap_between_pgd_and_autoattack_marks_pgd_unreliable(pgd, auto, failed) -> None:
    table = _gap_table(pgd, auto)
    (result,) = pgd_close_to_autoattack(table, SanityChecks(EPS), {"many": "PGD-100"})
    assert result.failed == failed
    assert result.values["gap"] == pytest.approx((pgd - auto) / 100)
    assert "unreliable" in result.message


class Dropout(nn.Module):
    """Dropout left on at evaluation time."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(nn.functional.dropout(x, 0.3, training=True))


class RandomShift(nn.Module):
    """A random input transformation (noise added on every call)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


@pytest.mark.parametrize("wrapper", [Dropout, RandomShift])
def test_a_randomised_model_gets_no_robust_accuracy(wrapper) -> None:
    model, data = trained_small_cnn()
    xy = data.test_tensors(16)
    spec = [AttackSpec("FGSM", fgsm, {"epsilon": EPS})]
    with pytest.raises(RandomizedModelError, match="expectation over transformation"):
        robustness_table(wrapper(model), xy, spec, sanity=False)
    table = robustness_table(model, xy, spec, sanity=False)  # deterministic: evaluated
    assert 0.0 <= table.robust_accuracy <= 1.0


def test_the_caption_names_every_attack_in_a_rob_with_its_budget() -> None:
    settings = EvalSettings(autoattack="cheap", square_queries=1000, fea_targets=9)
    specs = [s.describe() for s in white_box_attacks(settings, EPS)]
    text = describe_protocol(specs, EPS)
    for expected in ("FGSM (one step of eps)", "PGD-20 (20 steps of 0.25 eps, random start)",
                     "PGD-100 (100 steps", "MIM (20 steps", "C&W (30 steps", "kappa 50",
                     "FeaAttack (9 targets x 50 steps of 0.125 eps, cosine distance)",
                     "APGD-CE+T (100 iterations, 9 targets)",
                     "AutoAttack = APGD-CE+T then Square (1000 queries) on its survivors"):
        assert expected in text, (expected, text)


def test_the_original_autoattack_runs_on_the_a_rob_survivors_and_is_reused(tmp_path,
                                                                           monkeypatch) -> None:
    import adt.evaluate as E
    from adt.profiles import get_profile
    from adt.train import train

    _, data = trained_small_cnn()
    profile = get_profile("smoke")
    run = train(profile, "pgd_at", data=data, runs_root=tmp_path, progress=False)
    table = E.evaluate_run(run, data, progress=False)
    robust = E.full_autoattack_survivors(run, table, data, progress=False)
    assert robust.shape == (table.n_examples,) and robust.dtype == torch.bool
    assert bool((robust <= table.worst_case()).all())  # only A_rob's survivors can stay
    assert (run.path / E.FULL_AUTOATTACK_FILE).is_file()

    def no_attacks(*args, **kwargs):
        raise AssertionError("the stored original-AutoAttack run should have been reused")

    monkeypatch.setattr(E, "robustness_table", no_attacks)
    assert torch.equal(E.full_autoattack_survivors(run, table, data, progress=False), robust)
