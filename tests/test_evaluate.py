"""The robustness table: A_rob from the correctness matrix, the sanity checks (a masked
model is flagged, a normal one is not), batching, modes, eval.json and bad inputs."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from conftest import Quantized, Recorder, trained_small_cnn
from torch import nn

from adt.attack.functions import fgsm, mim, pgd
from adt.attack.spec import CLEAN, AttackSpec
from adt.config.profiles import EvalSettings, get_profile
from adt.evaluation import stored as evaluate
from adt.evaluation.checks import SanityChecks
from adt.evaluation.engine import robustness_table
from adt.evaluation.protocol import black_box_attacks, standard_attacks, white_box_attacks
from adt.evaluation.sanity import GradientMaskingError, GradientMaskingWarning, run_checks
from adt.evaluation.stored import eval_path, evaluate_run
from adt.evaluation.table import RobustnessTable, load_table
from adt.training.loop import train
from adt.training.runs import run_dir

EPS = 0.3  # MNIST
SETTINGS = EvalSettings(n_examples=64, batch_size=64, pgd_steps=(5, 10), mim_steps=5, cw_steps=5,
                        fea_steps=5, fea_targets=2, autoattack="cheap", spsa_examples=16,
                        spsa_iterations=3, spsa_samples=32, sanity_restarts=2)


def _table(model: nn.Module, attacks: list[AttackSpec]) -> tuple[RobustnessTable, list]:
    _, data = trained_small_cnn()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = robustness_table(model, data, attacks, SETTINGS.n_examples,
                                 batch_size=SETTINGS.batch_size,
                                 sanity=SanityChecks.from_settings(SETTINGS, EPS))
    return table, [w for w in caught if issubclass(w.category, GradientMaskingWarning)]


@pytest.fixture(scope="module")
def normal() -> tuple[RobustnessTable, list]:
    """The whole protocol (white-box, transfer from the model itself, SPSA) on a normally
    trained SmallCNN."""
    model, _ = trained_small_cnn()
    return _table(model, standard_attacks(SETTINGS, EPS, sources={"itself": model}))


@pytest.fixture(scope="module")
def masked() -> tuple[RobustnessTable, list]:
    """The same model behind a zero-gradient input quantisation; transfer from the model
    without it (AutoAttack and SPSA left out for time)."""
    model, _ = trained_small_cnn()
    attacks = [s for s in white_box_attacks(SETTINGS, EPS)
               if s.name not in ("APGD-CE+T", "AutoAttack")]
    attacks += black_box_attacks(SETTINGS, EPS, sources={"unmasked": model}, include_spsa=False)
    return _table(Quantized(model), attacks)


def _in_worst_case(table: RobustnessTable) -> list[str]:
    return [n for n, k in zip(table.names, table.kinds, strict=True) if k in ("clean", "white")]


def test_a_rob_is_the_recomputable_per_example_worst_case(normal: tuple) -> None:
    table, _ = normal
    rows = [table.names.index(n) for n in _in_worst_case(table)]
    # clean, FGSM, PGD-5, PGD-10, MIM, C&W, FeaAttack, APGD-CE+T, AutoAttack (+ Square)
    assert len(rows) == 9
    recomputed = table.correct[rows].all(0).float().mean().item()
    assert table.robust_accuracy == pytest.approx(recomputed)
    for name in _in_worst_case(table):
        assert table.robust_accuracy <= table.accuracy[name] + 1e-9
        assert table.accuracy[name] == pytest.approx(table.correct[table.names.index(name)]
                                                     .float().mean().item())
    again = RobustnessTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert torch.equal(again.correct, table.correct)
    assert again.robust_accuracy == table.robust_accuracy and again.accuracy == table.accuracy
    assert run_checks(again) == table.checks  # the checks, too, come from the matrix


def test_normally_trained_model_passes_the_sanity_checks(normal: tuple) -> None:
    table, caught = normal
    acc = table.accuracy
    assert acc["Clean"] > 0.6 and acc["PGD-10"] < acc["Clean"] - 0.3  # the attacks work
    assert acc["SPSA"] >= 0 and table.n_evaluated[table.names.index("SPSA")] == 16
    statuses = {c.name: c.status for c in table.checks}
    assert statuses == {"pgd_many": "passed", "pgd_restarts": "passed",
                        "large_epsilon": "passed",
                        "white_vs_black[Transfer PGD-5 from itself]": "passed",
                        "white_vs_black[Transfer MIM from itself]": "passed",
                        "white_vs_black[SPSA]": "passed",
                        "autoattack_vs_pgd[APGD-CE+T]": "passed",
                        "score_only[AutoAttack]": "passed", "score_only[SPSA]": "passed",
                        "pgd_vs_autoattack[AutoAttack]": "passed"}
    assert not table.gradient_masking_suspected and not caught
    assert "sanity" in table.kinds  # the restart and large-epsilon runs are kept ...
    assert all(r["kind"] != "sanity" for r in table.rows())  # ... but not reported


def test_lookup_finds_rows_by_attack_source_and_settings(normal: tuple) -> None:
    table, _ = normal
    again = RobustnessTable.from_dict(json.loads(json.dumps(table.to_dict())))
    for t in (table, again):  # the lookup reads the rows' descriptions, kept in eval.json
        assert t.lookup("pgd", steps=10) == "PGD-10"
        assert t.lookup("pgd", steps=5) == "PGD-5"
        assert t.lookup("mim") == "MIM"
        # a transfer row is found by the attack it crafts with and by its source
        assert t.lookup("pgd", source="itself") == "Transfer PGD-5 from itself"
        assert t.lookup("pgd", source="itself", steps=5) == "Transfer PGD-5 from itself"
        assert t.lookup("mim", source="itself") == "Transfer MIM from itself"
        assert t.lookup("spsa") == "SPSA"
        assert t.lookup("autoattack") == "APGD-CE+T"  # AutoAttack's gradient attacks
        assert t.lookup("square") == "AutoAttack"  # ... then Square on their survivors
    assert table.names_of("black") == ["Transfer PGD-5 from itself", "Transfer MIM from itself",
                                       "SPSA"]
    assert table.names_of("clean", "white") == _in_worst_case(table)
    # several rows (the sanity runs of PGD are never candidates): a KeyError naming them
    with pytest.raises(KeyError, match=r"(?<!\d)2 rows run 'pgd' from None") as info:
        table.lookup("pgd")
    assert "'PGD-5', 'PGD-10'" in str(info.value) and "rows: Clean, FGSM" in str(info.value)
    for attack, kwargs in (("pgd", {"steps": 7}), ("pgd", {"source": "elsewhere"}),
                           ("transfer", {"source": "itself"}), ("spsa", {"source": "itself"})):
        with pytest.raises(KeyError, match=rf"(?<!\d)0 rows run '{attack}'") as info:
            table.lookup(attack, **kwargs)
        assert "none" in str(info.value) and "Transfer MIM from itself" in str(info.value)


def test_gradient_masking_model_is_flagged(masked: tuple) -> None:
    table, caught = masked
    assert table.gradient_masking_suspected
    assert "large_epsilon" in table.flags
    assert "white_vs_black[Transfer PGD-5 from unmasked]" in table.flags
    assert len(caught) == 1 and "large_epsilon" in str(caught[0].message)
    assert "Gradient masking suspected" in table.to_markdown()
    blob = table.to_dict()
    assert blob["gradient_masking_suspected"] and blob["flags"] == table.flags
    # the masked model looks robust under white-box attacks: exactly what must be flagged
    assert table.robust_accuracy > 0.3


def test_strict_raises_on_a_masked_model() -> None:
    model, data = trained_small_cnn()
    checks = SanityChecks(EPS, steps=(3, 3), restarts=1, large_steps=5)
    with pytest.raises(GradientMaskingError, match="large_epsilon"):
        robustness_table(Quantized(model), data.test_tensors(32), [CLEAN], sanity=checks,
                         strict=True)


def test_worst_case_on_a_known_matrix() -> None:
    specs = [CLEAN.describe(), AttackSpec("A", pgd).describe(),
             AttackSpec("B", fgsm).describe(), AttackSpec("S", pgd, kind="black").describe()]
    correct = torch.tensor([[1, 1, 1, 0, 1], [1, 0, 1, 0, 1], [1, 1, 0, 0, 1], [0, 0, 0, 0, 0]],
                           dtype=torch.bool)
    table = RobustnessTable(specs, correct, [5, 5, 5, 2], [0.0] * 4)
    assert table.accuracy == {"Clean": 0.8, "A": 0.6, "B": 0.6, "S": 0.0}
    assert table.robust_accuracy == pytest.approx(0.4)  # black-box rows stay out of A_rob
    assert table.worst_case(["A", "B"]).tolist() == [True, False, False, False, True]
    with pytest.raises(ValueError, match="covering every example"):
        table.worst_case(["S"])


def test_batching_does_not_change_the_result() -> None:
    model, data = trained_small_cnn()
    xy = data.test_tensors(40)
    attacks = [AttackSpec("FGSM", fgsm, {"epsilon": 0.1})]
    one = robustness_table(model, xy, attacks, batch_size=40, sanity=False)
    many = robustness_table(model, xy, attacks, batch_size=7, sanity=False)
    assert torch.equal(one.correct, many.correct)
    assert one.names == ["Clean", "FGSM"] and one.checks == []


def test_eval_mode_restored_modes_reproducible_and_no_rng_trace() -> None:
    model, data = trained_small_cnn()
    recorder = Recorder(model).train()
    attacks = [AttackSpec("PGD-3", pgd, {"epsilon": 0.1, "step_size": 0.04, "steps": 3})]
    state = torch.get_rng_state()
    try:
        first = robustness_table(recorder, data.test_tensors(24), attacks, sanity=False)
        assert recorder.modes and not any(recorder.modes)  # eval mode throughout
        assert recorder.training and model.training  # and restored afterwards
    finally:
        model.eval()
    second = robustness_table(model, data.test_tensors(24), attacks, sanity=False)
    assert torch.equal(first.correct, second.correct)  # seeded inside
    assert torch.equal(torch.get_rng_state(), state)
    assert first.meta["device"] == "cpu" and first.meta["autocast"] is False


def test_evaluate_run_writes_and_reuses_eval_json(tmp_path, monkeypatch) -> None:
    profile = get_profile("smoke")
    _, data = trained_small_cnn()  # mnist5k, loaded once
    run = train(profile, "standard", 0, data=data, runs_root=tmp_path, progress=False)
    table = evaluate_run(run, data, progress=False)
    path = eval_path(profile, "standard", 0, runs_root=tmp_path)
    assert path == run_dir(profile, "standard", 0, tmp_path) / "eval.json" and path.is_file()
    blob = json.loads(path.read_text())
    for key in ("epsilon", "n_examples", "accuracy", "robust_accuracy", "correct", "checks",
                "flags", "gradient_masking_suspected", "timing", "attacks", "sanity"):
        assert key in blob
    assert blob["epsilon"] == pytest.approx(0.3) and blob["n_examples"] == 32
    assert blob["robust_accuracy"] == pytest.approx(table.robust_accuracy)
    assert {a["name"] for a in blob["attacks"]} >= {"Clean", "FGSM", "PGD-2", "PGD-4", "MIM",
                                                    "C&W", "FeaAttack", "AutoAttack", "SPSA"}
    pgd2 = next(a for a in blob["attacks"] if a["name"] == "PGD-2")
    assert pgd2["settings"] == {"epsilon": 0.3, "step_size": 0.075, "steps": 2,
                                "random_start": True}
    assert len(blob["correct"]["SPSA"]) == 8 and len(blob["correct"]["PGD-2"]) == 32

    def no_attacks(*args, **kwargs):
        raise AssertionError("the stored eval.json should have been reused")

    monkeypatch.setattr(evaluate, "robustness_table", no_attacks)
    reused = evaluate_run(run, data, progress=False)
    assert torch.equal(reused.correct, table.correct)
    assert load_table(run.path).accuracy == table.accuracy
    with pytest.raises(AssertionError, match="reused"):
        evaluate_run(run, data, progress=False, force=True)


def test_standard_attack_list_follows_the_protocol() -> None:
    eps = 8 / 255
    specs = {s.name: s for s in standard_attacks(EvalSettings(), eps,
                                                 sources={"AT": nn.Linear(2, 2)})}
    assert list(specs)[:10] == ["Clean", "FGSM", "PGD-20", "PGD-100", "MIM", "C&W", "FeaAttack",
                               "APGD-CE+T+FAB-T", "AutoAttack", "Transfer PGD-20 from AT"]
    assert specs["PGD-100"].settings == {"epsilon": eps, "step_size": eps / 4, "steps": 100,
                                         "random_start": True}
    assert math.isclose(specs["MIM"].settings["step_size"], 2 / 255)
    assert specs["MIM"].settings["steps"] == 20 and specs["MIM"].settings["decay"] == 1.0
    assert specs["C&W"].settings["steps"] == 30 and specs["C&W"].settings["kappa"] == 50
    assert math.isclose(specs["FeaAttack"].settings["step_size"], 1 / 255)
    assert specs["FeaAttack"].settings["steps"] == 50
    # the original AutoAttack: its gradient attacks, then Square on their survivors
    assert specs["APGD-CE+T+FAB-T"].settings == {"epsilon": eps, "version": "gradient",
                                                 "num_classes": 10, "steps": 100, "targets": 9}
    assert specs["AutoAttack"].settings == {"epsilon": eps, "queries": 5000}
    assert specs["AutoAttack"].survivors_of == "APGD-CE+T+FAB-T"
    spsa = specs["SPSA"]
    assert spsa.kind == "black" and spsa.n_examples == 1000 and spsa.float32
    assert spsa.settings == {"epsilon": eps, "lr": 0.01, "delta": 1e-3, "iterations": 100,
                             "samples": 256}
    assert specs["Transfer MIM from AT"].describe()["attack"] == "transfer"
    assert specs["Transfer MIM from AT"].describe()["settings"]["attack"] == "mim"
    transfer_mim = specs["Transfer MIM from AT"]
    assert transfer_mim.attack is mim and transfer_mim.source == "AT"
    assert isinstance(transfer_mim.source_model, nn.Linear)
    assert transfer_mim.describe()["source"] == "AT"
    checks = SanityChecks.from_settings(EvalSettings(), eps)
    assert checks.steps == (20, 100) and checks.restarts == 5 and checks.large_epsilon == 0.5


@pytest.mark.parametrize("build,message", [
    (lambda: AttackSpec("PGD", pgd, kind="grey"), "kind='grey'; allowed"),
    (lambda: AttackSpec("", pgd), "non-empty string"),
    (lambda: AttackSpec("PGD", pgd, n_examples=10), "must cover every example"),
    (lambda: AttackSpec("Clean", pgd, kind="clean"), "attack=None"),
    (lambda: AttackSpec("X", "pgd"), "not callable"),
    (lambda: AttackSpec("T", pgd, source_model=nn.Linear(2, 2)), "kind='black', source="),
    (lambda: SanityChecks(0.3, large_epsilon=0.2), "large_epsilon=0.2 must exceed"),
    (lambda: SanityChecks(0.3, steps=(100, 20)), "few <= many"),
    (lambda: SanityChecks(0.3, restarts=0), "restarts=0"),
])
def test_bad_specs_raise_helpful_errors(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_table_arguments_raise_helpful_errors() -> None:
    model, data = trained_small_cnn()
    xy = data.test_tensors(8)
    spec = AttackSpec("M", mim, {"epsilon": 0.1, "step_size": 0.05, "steps": 1})
    cases = [
        (dict(attacks=[]), "non-empty list of AttackSpec"),
        (dict(attacks=[spec, spec]), r"unique, \['M'\] repeat"),
        (dict(attacks=[spec], n_examples=9), "only 8 test examples"),
        (dict(attacks=[spec], batch_size=0), "batch_size=0"),
        (dict(attacks=[CLEAN], sanity=True), "one epsilon among the white-box rows"),
        (dict(attacks=[spec], data="mnist"), "ImageDataset or a pair"),
    ]
    for kwargs, message in cases:
        kwargs = {"data": xy, "sanity": False, **kwargs}
        with pytest.raises(ValueError, match=message):
            robustness_table(model, kwargs.pop("data"), kwargs.pop("attacks"), **kwargs)
    with pytest.raises(FileNotFoundError, match="evaluate the run first"):
        load_table("/nonexistent/run")


def test_the_cost_table_counts_each_rows_passes_from_its_settings() -> None:
    from adt.evaluation.protocol import (
        LIBRARY_OVERHEAD,
        SPSA_SAMPLE,
        SQUARE_QUERY,
        autoattack_protocol,
        estimate_seconds,
        row_passes,
    )

    specs = {s.name: s for s in standard_attacks(SETTINGS, EPS)}
    assert row_passes(specs["Clean"]) == (0.0, 1.0)
    assert row_passes(specs["FGSM"]) == (1.0, 1.0)
    assert row_passes(specs["PGD-10"]) == (10.0, 1.0) and row_passes(specs["C&W"])[0] == 5
    assert row_passes(specs["FeaAttack"]) == (2 * 5, 3)  # targets x steps
    # AutoAttack "cheap": APGD-CE and APGD-T (targets) at 100 iterations; Square on survivors
    assert row_passes(specs["APGD-CE+T"])[0] == 100 * (1 + 9) * LIBRARY_OVERHEAD
    assert row_passes(specs["AutoAttack"])[0] == 5000 * SQUARE_QUERY
    assert row_passes(specs["SPSA"])[0] == SPSA_SAMPLE * 3 * 32
    restarts = SanityChecks.from_settings(SETTINGS, EPS).specs()["restarts"]
    assert row_passes(restarts) == (2 * 5, 2)  # 2 restarts of PGD-5
    original = autoattack_protocol(EPS)[1]
    assert row_passes(original)[0] == (100 * 10 + 100 * 9) * LIBRARY_OVERHEAD + 5000 * SQUARE_QUERY
    # seconds: passes x the timed pass, per batch of images; SPSA on its own 16 images
    assert estimate_seconds([specs["PGD-10"]], 64, 64, (0.01, 0.001)) == pytest.approx(0.101)
    assert estimate_seconds([specs["PGD-10"]], 128, 64, (0.01, 0.001)) == pytest.approx(0.202)
    assert estimate_seconds([specs["SPSA"]], 64, 64, (0.01, 0.001)) == pytest.approx(
        16 / 64 * (SPSA_SAMPLE * 96 * 0.01 + 0.001))


def test_the_estimate_times_the_model_and_counts_the_sanity_runs() -> None:
    from adt.evaluation.protocol import estimate_table, sanity_rows

    model, data = trained_small_cnn()
    x, y = data.test_tensors(16)
    specs = white_box_attacks(SETTINGS, EPS)[:3]  # Clean, FGSM, PGD-5
    checks = SanityChecks.from_settings(SETTINGS, EPS)
    extra = sanity_rows(checks, specs)
    assert [s.name for s in extra] == ["PGD-10", "PGD-5 x2 restarts", "PGD-10 at eps=0.5"]
    estimate = estimate_table(model, x, y, specs, 16, checks)
    assert estimate.batch == 16 and all(t > 0 for t in estimate.passes)
    assert estimate.seconds > estimate.again(specs) > 0  # the sanity runs cost extra
    assert "estimated time: about" in estimate.line() and "an estimate" in estimate.line()
    assert model.training is False
