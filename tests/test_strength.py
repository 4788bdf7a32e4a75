"""Evaluation strength: AutoAttack as the original cascade, masking checks that fire on mild
masking, refusal of randomised models, and captions that say what ran."""

from __future__ import annotations

import pytest
import torch
from conftest import trained_small_cnn
from torch import nn

from adt.attack.functions import autoattack, autoattack_parts, fgsm, original_autoattack
from adt.attack.spec import CLEAN, AttackSpec
from adt.config.profiles import EvalSettings
from adt.evaluation.checks import SanityChecks
from adt.evaluation.engine import RandomizedModelError, robustness_table
from adt.evaluation.protocol import (
    autoattack_specs,
    describe_protocol,
    full_autoattack,
    white_box_attacks,
)
from adt.evaluation.sanity import pgd_close_to_autoattack, score_based_only
from adt.evaluation.table import RobustnessTable

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
    # the reference is the AutoAttack authors' own code, not these components
    (reference,) = full_autoattack(8 / 255, 10)
    assert reference.attack is original_autoattack and reference.float32
    assert reference.settings == {"epsilon": 8 / 255}


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


class Tripwire(nn.Module):
    """Mild gradient masking by construction, on a known batch of ``anchors`` (images more
    than 2 eps apart in l_inf, so an input in an anchor's eps ball is judged against that
    anchor; ``labels`` their labels). The logits are the features through an identity
    ``nn.Linear`` (FeaAttack hooks its input).

    * The first ``masked`` anchors pass no gradient at all, and their prediction turns from
      the label to the next class once more than ``trip`` pixels moved by 0.99 eps or more
      (each such pixel lowers the margin). Gradient attacks can only leave such an image at
      their random start, which takes at most 1 % of the pixels that far (a handful of 784,
      at most 14 in 1,200 draws; more than ``trip`` = 100 has a probability below 1e-40),
      so they never break it; Square sets whole squares to +-eps, climbs the margin and
      breaks every one.
    * The others are linear in the input, their gradient pointing straight at the next
      class: FGSM already breaks them, so no example is left for Square to break alone.
    """

    def __init__(self, anchors: torch.Tensor, labels: torch.Tensor, masked: int,
                 epsilon: float = EPS, trip: int = 100) -> None:
        super().__init__()
        flat = anchors.flatten(1)
        gaps = (flat[:, None] - flat[None]).abs().amax(2) + 2 * torch.eye(len(flat))
        assert float(gaps.min()) > 2 * epsilon, "anchors closer than 2 eps: ambiguous"
        self.register_buffer("anchors", flat)
        self.register_buffer("labels", labels)
        self.masked, self.epsilon, self.trip = masked, epsilon, trip
        self.head = nn.Linear(10, 10)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(10))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        index = (flat[:, None] - self.anchors[None]).abs().amax(2).argmin(1)
        anchor, label = self.anchors[index], self.labels[index]
        delta = flat - anchor
        push = 10 * (delta * torch.where(anchor < 0.5, 1.0, -1.0)).mean(1)  # a gradient
        moved = (delta.abs() >= 0.99 * self.epsilon).sum(1).to(x.dtype)  # no gradient
        masked = index < self.masked
        on_label = torch.where(masked, 1 + 0.5 / self.trip, 1 - push)
        on_next = torch.where(masked, moved / self.trip, push)
        features = torch.zeros(len(x), 10, dtype=x.dtype, device=x.device)
        features = features.scatter(1, label[:, None], on_label[:, None])
        features = features.scatter(1, ((label + 1) % 10)[:, None], on_next[:, None])
        return self.head(features)


MASKED = 8  # of 48 images


@pytest.fixture(scope="module")
def mildly_masked() -> RobustnessTable:
    """The cheap protocol (AutoAttack: APGD-CE+T, then Square on its survivors) and the
    sanity checks on a Tripwire model masking the first 8 of 48 test images."""
    _, data = trained_small_cnn()  # the data only
    x, y = data.test_tensors(48)
    settings = EvalSettings(pgd_steps=(5, 10), mim_steps=5, cw_steps=5, fea_steps=5,
                            fea_targets=2, autoattack="cheap", autoattack_steps=10,
                            autoattack_targets=2, square_queries=500, sanity_restarts=2)
    with pytest.warns(UserWarning, match="score_only"):
        return robustness_table(Tripwire(x, y, MASKED).eval(), (x, y),
                                white_box_attacks(settings, EPS), batch_size=48,
                                sanity=SanityChecks.from_settings(settings, EPS))


def _assert_masking_flagged_and_in_a_rob(table: RobustnessTable) -> None:
    """The masked images, and only they, survive every gradient attack; score_only names
    exactly them; Square breaks them, and A_rob counts that."""
    checks = {c.name: c for c in table.checks}
    check = checks.get("score_only[AutoAttack]")
    assert check is not None and check.failed
    assert check.values["count"] == MASKED and check.values["examples"] == list(range(MASKED))
    gradient_rows = [s["name"] for s in table.specs
                     if s["kind"] in ("clean", "white") and not s["score_based"]]
    gradient_only = table.worst_case(gradient_rows)
    assert gradient_only.nonzero().flatten().tolist() == list(range(MASKED))
    everything = table.worst_case(table.names_of("clean", "white"))
    assert int(everything.sum()) == 0  # Square broke every masked image ...
    assert table.robust_accuracy == pytest.approx(float(everything.float().mean()))  # ... in A_rob


def test_mild_masking_is_flagged_and_a_rob_includes_square(mildly_masked) -> None:
    """Masking on 8 of 48 images, certain by construction (Tripwire), fails the score_only
    check, which names those 8, and lowers A_rob from 8/48 (gradient attacks) to 0."""
    _assert_masking_flagged_and_in_a_rob(mildly_masked)
    assert mildly_masked.robust_accuracy == 0.0


def test_the_masking_test_fails_when_the_check_is_off(mildly_masked, monkeypatch) -> None:
    """The assertions above have teeth: with score_based_only reporting "passed" (the check
    switched off), the same table fails them."""
    import dataclasses

    import adt.evaluation.sanity

    def switched_off(table, checks):
        return [dataclasses.replace(c, status="passed")
                for c in score_based_only(table, checks)]

    monkeypatch.setattr(adt.evaluation.sanity, "score_based_only", switched_off)
    table = dataclasses.replace(mildly_masked, checks=adt.evaluation.sanity.run_checks(mildly_masked))
    assert {c.name: c.status for c in table.checks}["score_only[AutoAttack]"] == "passed"
    with pytest.raises(AssertionError):
        _assert_masking_flagged_and_in_a_rob(table)


def test_an_unmasked_model_passes_the_new_checks() -> None:
    """No false alarm on the trained model. Margins measured on 12 models, two kernel
    paths: the gradient attacks leave none of the 48 examples standing (so Square can break
    none alone), and PGD-10 is above AutoAttack by at most 1 example of the 3 allowed."""
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


def _survivors_table(n: int, survivors: list[int]) -> RobustnessTable:
    """A table of n examples whose A_rob survivors are ``survivors`` (a clean row only)."""
    correct = torch.zeros(1, n, dtype=torch.bool)
    correct[0, survivors] = True
    return RobustnessTable([CLEAN.describe()], correct, [n], [0.0])


def test_the_original_autoattack_runs_on_the_a_rob_survivors_and_is_reused(tmp_path,
                                                                           monkeypatch) -> None:
    """The original AutoAttack runs on exactly the survivors of A_rob (planted: 0, 3 and 5
    of 8), keeps its table and reuses it; with no survivors nothing runs and nothing is
    written (the result, all False, needs no attack)."""
    import adt.evaluation.stored as E
    from adt.config.profiles import get_profile
    from adt.evaluation.table import load_table
    from adt.training.loop import train

    def no_attacks(*args, **kwargs):
        raise AssertionError("no attack should have run")

    _, data = trained_small_cnn()
    run = train(get_profile("smoke"), "pgd_at", data=data, runs_root=tmp_path, progress=False)
    path = run.path / E.FULL_AUTOATTACK_FILE
    with monkeypatch.context() as m:
        m.setattr(E, "robustness_table", no_attacks)
        none = E.full_autoattack_survivors(run, _survivors_table(8, []), data, progress=False)
    assert none.tolist() == [False] * 8 and not path.exists()

    table = _survivors_table(8, [0, 3, 5])
    robust = E.full_autoattack_survivors(run, table, data, progress=False)
    assert robust.shape == (8,) and robust.dtype == torch.bool
    assert bool((robust <= table.worst_case()).all())  # only A_rob's survivors can stay
    assert load_table(path).meta["config"]["examples"] == [0, 3, 5]  # attacked: those only
    monkeypatch.setattr(E, "robustness_table", no_attacks)
    assert torch.equal(E.full_autoattack_survivors(run, table, data, progress=False), robust)
