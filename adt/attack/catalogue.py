"""The attacks of the paper's protocol, one record each: settings, rows and caption.

A :class:`ProtocolAttack` holds what a table needs of one attack of the paper's
evaluation (REPRODUCTION.md, "Evaluation protocol"):

- ``settings``, a frozen dataclass whose fields (with the paper's defaults) become fields of
  a profile's :class:`~adt.config.profiles.EvalSettings`, which is built from them;
- ``rows``, which turns those settings, epsilon and the number of classes into
  :class:`~adt.attack.spec.AttackSpec` rows;
- ``captions``, the caption text of each of its rows, by the name of the attack function.

:data:`PROTOCOL` lists the white-box attacks in the order of the paper's tables; SPSA, the
score-based black-box attack, is :data:`SPSA`. Adding an attack to the protocol is its
function (:mod:`adt.attack.functions`), its record, and one line in :data:`PROTOCOL` (or
:func:`register_attack`, as ``tests/test_attack_catalogue.py`` does with a toy attack).

The settings' fields are named as in ``EvalSettings`` (``pgd_steps``, ``cw_kappa``, ...);
``step_fraction`` (a step of ``step_fraction * epsilon``) is shared by PGD, MIM and C&W.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from adt.attack.functions import autoattack, cw, fea_attack, fgsm, mim
from adt.attack.functions import spsa as spsa_attack
from adt.attack.functions import square as square_attack
from adt.attack.spec import AttackSpec, pgd_spec
from adt.core._checks import check_choice, check_int_at_least, check_positive

__all__ = ["ProtocolAttack", "CheckedSettings", "StepSettings", "PGDAttackSettings", "MIMSettings",
           "CWSettings", "FeaAttackSettings", "AutoAttackSettings", "SPSASettings", "NoAttackSettings",
           "FGSM", "PGD", "MIM", "CW", "FEA_ATTACK", "AUTOATTACK", "SPSA", "PROTOCOL",
           "ATTACK_SETTINGS", "register_attack", "check_settings", "row_caption"]

Caption = Callable[[Mapping[str, Any], float | None], str]


def check_settings(settings: Any) -> None:
    """Run the checks of every settings class ``settings`` is built from (a class's own
    ``check``; ``EvalSettings`` inherits several)."""
    for cls in type(settings).__mro__:
        check = cls.__dict__.get("check")
        if check is not None:
            check(settings)


@dataclass(frozen=True)
class CheckedSettings:
    """Base of the attacks' settings: constructing one runs :func:`check_settings`."""

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class NoAttackSettings:
    """An attack without settings of its own (FGSM: one step of epsilon)."""


@dataclass(frozen=True)
class StepSettings(CheckedSettings):
    """The step of the iterative attacks PGD, MIM and C&W: ``step_fraction * epsilon``
    (the paper's 2/255 at 8/255 is 0.25)."""

    step_fraction: float = 0.25

    def check(self) -> None:
        check_positive(self.step_fraction, "step_fraction", "0.25")


@dataclass(frozen=True)
class PGDAttackSettings(StepSettings):
    """PGD-k (Madry et al. 2018) for each k in ``pgd_steps``, from a uniform random start."""

    pgd_steps: tuple[int, ...] = (20, 100)

    def check(self) -> None:
        for steps in self.pgd_steps:
            check_int_at_least(steps, 1, "pgd_steps", "20")


@dataclass(frozen=True)
class MIMSettings(StepSettings):
    """MIM (Dong et al. 2018): ``mim_steps`` steps with momentum decay 1."""

    mim_steps: int = 20

    def check(self) -> None:
        check_int_at_least(self.mim_steps, 1, "mim_steps", "20")


@dataclass(frozen=True)
class CWSettings(StepSettings):
    """C&W (Carlini & Wagner 2017): PGD on the margin loss with confidence ``cw_kappa``."""

    cw_steps: int = 30
    cw_kappa: float = 50.0

    def check(self) -> None:
        check_int_at_least(self.cw_steps, 1, "cw_steps", "30")
        check_positive(self.cw_kappa, "cw_kappa", "50")


@dataclass(frozen=True)
class FeaAttackSettings(CheckedSettings):
    """FeaAttack: ``fea_steps`` steps of ``fea_step_fraction * epsilon`` (1/255 at 8/255)
    towards the features of each of ``fea_targets`` images of other classes."""

    fea_steps: int = 50
    fea_step_fraction: float = 0.125
    fea_targets: int = 200  # target images (of other labels, drawn with replacement) per example

    def check(self) -> None:
        check_int_at_least(self.fea_steps, 1, "fea_steps", "50")
        check_positive(self.fea_step_fraction, "fea_step_fraction", "0.125")
        check_int_at_least(self.fea_targets, 1, "fea_targets", "200")


@dataclass(frozen=True)
class AutoAttackSettings(CheckedSettings):
    """AutoAttack (Croce & Hein 2020): its gradient attacks ("standard": APGD-CE, APGD-T,
    FAB-T; "cheap": no FAB-T) with ``autoattack_steps`` iterations and
    ``autoattack_targets`` targets, then Square with ``square_queries`` queries on their
    survivors."""

    autoattack: str = "standard"
    autoattack_steps: int = 100
    autoattack_targets: int = 9
    square_queries: int = 5000

    def check(self) -> None:
        check_choice(self.autoattack, ("standard", "cheap"), "autoattack version")
        check_int_at_least(self.autoattack_steps, 1, "autoattack_steps", "100")
        check_int_at_least(self.autoattack_targets, 1, "autoattack_targets", "9")
        check_int_at_least(self.square_queries, 1, "square_queries", "5000")


@dataclass(frozen=True)
class SPSASettings(CheckedSettings):
    """SPSA (Uesato et al. 2018), score-based: ``spsa_iterations`` Adam steps of rate
    ``spsa_lr`` on ``spsa_samples`` perturbations of size ``spsa_delta``, on the first
    ``spsa_examples`` images."""

    spsa_examples: int = 1000
    spsa_iterations: int = 100
    spsa_samples: int = 256
    spsa_lr: float = 0.01  # the paper's at 8/255; scale it with epsilon on other datasets
    spsa_delta: float = 1e-3

    def check(self) -> None:
        for name, example in (("spsa_examples", "1000"), ("spsa_iterations", "100"),
                              ("spsa_samples", "256")):
            check_int_at_least(getattr(self, name), 1, name, example)
        check_positive(self.spsa_lr, "spsa_lr", "0.01")
        check_positive(self.spsa_delta, "spsa_delta", "1e-3")


@dataclass(frozen=True)
class ProtocolAttack:
    """One attack of the protocol: its ``settings`` class, ``rows(settings, epsilon,
    num_classes)`` giving its table rows, and ``captions``: the caption text of a row
    (an :meth:`AttackSpec.describe` dict, and epsilon or None) by attack function name."""

    name: str
    settings: type
    rows: Callable[[Any, float, int], list[AttackSpec]]
    captions: Mapping[str, Caption]

    def settings_from(self, settings: Any) -> Any:
        """This attack's settings: ``settings`` itself when it holds them (an
        ``EvalSettings``), else the class's defaults with any field of the same name."""
        if isinstance(settings, self.settings):
            return settings
        names = {f.name for f in fields(self.settings)}
        return self.settings(**{k: getattr(settings, k) for k in names if hasattr(settings, k)})

    def specs(self, settings: Any, epsilon: float, num_classes: int = 10) -> list[AttackSpec]:
        return self.rows(self.settings_from(settings), epsilon, num_classes)


def _step(spec: Mapping[str, Any], epsilon: float | None, key: str = "step_size") -> str:
    value = spec["settings"][key]
    return f"{value / epsilon:.3g} eps" if epsilon else f"{value:.3g}"


def _fgsm_rows(s: NoAttackSettings, epsilon: float, num_classes: int) -> list[AttackSpec]:
    return [AttackSpec("FGSM", fgsm, {"epsilon": epsilon})]


def _pgd_rows(s: PGDAttackSettings, epsilon: float, num_classes: int) -> list[AttackSpec]:
    return [pgd_spec(f"PGD-{k}", epsilon, s.step_fraction, k) for k in s.pgd_steps]


def _mim_rows(s: MIMSettings, epsilon: float, num_classes: int) -> list[AttackSpec]:
    return [AttackSpec("MIM", mim, {"epsilon": epsilon, "step_size": s.step_fraction * epsilon,
                                    "steps": s.mim_steps, "decay": 1.0})]


def _cw_rows(s: CWSettings, epsilon: float, num_classes: int) -> list[AttackSpec]:
    return [AttackSpec("C&W", cw, {"epsilon": epsilon, "step_size": s.step_fraction * epsilon,
                                   "steps": s.cw_steps, "kappa": s.cw_kappa})]


def _fea_rows(s: FeaAttackSettings, epsilon: float, num_classes: int) -> list[AttackSpec]:
    return [AttackSpec("FeaAttack", fea_attack, {
        "epsilon": epsilon, "step_size": s.fea_step_fraction * epsilon, "steps": s.fea_steps,
        "targets": s.fea_targets}, uses_pool=True)]


def _autoattack_rows(s: AutoAttackSettings, epsilon: float,
                     num_classes: int) -> list[AttackSpec]:
    """Two rows: the gradient attacks (APGD-CE, APGD-T and, for "standard", FAB-T), then
    "AutoAttack": Square on that row's survivors, i.e. the whole cascade."""
    version = "gradient" if s.autoattack == "standard" else "cheap"
    name = "APGD-CE+T+FAB-T" if version == "gradient" else "APGD-CE+T"
    gradient = AttackSpec(name, autoattack, {
        "epsilon": epsilon, "version": version, "num_classes": num_classes,
        "steps": s.autoattack_steps, "targets": min(s.autoattack_targets, num_classes - 1)})
    cascade = AttackSpec("AutoAttack", square_attack, {"epsilon": epsilon,
                                                       "queries": s.square_queries},
                         survivors_of=name, score_based=True)
    return [gradient, cascade]


def _spsa_rows(s: SPSASettings, epsilon: float, num_classes: int) -> list[AttackSpec]:
    return [AttackSpec("SPSA", spsa_attack, {
        "epsilon": epsilon, "lr": s.spsa_lr, "delta": s.spsa_delta,
        "iterations": s.spsa_iterations, "samples": s.spsa_samples},
        kind="black", n_examples=s.spsa_examples, float32=True, score_based=True)]


def _square_caption(spec: Mapping[str, Any], epsilon: float | None) -> str:
    s, name = spec["settings"], spec["name"]
    if spec.get("survivors_of"):
        return (f"{name} = {spec['survivors_of']} then Square ({s.get('queries')} queries) on "
                "its survivors")
    return f"{name} (Square, {s.get('queries')} queries)"


FGSM = ProtocolAttack("FGSM", NoAttackSettings, _fgsm_rows, {
    "fgsm": lambda spec, eps: f"{spec['name']} (one step of eps)"})
PGD = ProtocolAttack("PGD", PGDAttackSettings, _pgd_rows, {
    "pgd": lambda spec, eps: (f"{spec['name']} ({spec['settings'].get('steps')} steps of "
                              f"{_step(spec, eps)}, random start)")})
MIM = ProtocolAttack("MIM", MIMSettings, _mim_rows, {
    "mim": lambda spec, eps: (f"{spec['name']} ({spec['settings'].get('steps')} steps of "
                              f"{_step(spec, eps)}, decay {spec['settings'].get('decay')})")})
CW = ProtocolAttack("C&W", CWSettings, _cw_rows, {
    "cw": lambda spec, eps: (f"{spec['name']} ({spec['settings'].get('steps')} steps of "
                             f"{_step(spec, eps)}, kappa {spec['settings'].get('kappa'):g})")})
FEA_ATTACK = ProtocolAttack("FeaAttack", FeaAttackSettings, _fea_rows, {
    "fea_attack": lambda spec, eps: (
        f"{spec['name']} ({spec['settings'].get('targets')} targets x "
        f"{spec['settings'].get('steps')} steps of {_step(spec, eps)}, cosine distance)")})
AUTOATTACK = ProtocolAttack("AutoAttack", AutoAttackSettings, _autoattack_rows, {
    "autoattack": lambda spec, eps: (f"{spec['name']} ({spec['settings'].get('steps')} "
                                     f"iterations, {spec['settings'].get('targets')} targets)"),
    "square": _square_caption})
SPSA = ProtocolAttack("SPSA", SPSASettings, _spsa_rows, {})

#: The white-box attacks of the paper's tables, in their order (the clean row comes first).
PROTOCOL: list[ProtocolAttack] = [FGSM, PGD, MIM, CW, FEA_ATTACK, AUTOATTACK]

#: The settings classes a profile's ``EvalSettings`` is built from.
ATTACK_SETTINGS: tuple[type, ...] = tuple(dict.fromkeys(
    a.settings for a in (*PROTOCOL, SPSA) if a.settings is not NoAttackSettings))


def register_attack(attack: ProtocolAttack) -> ProtocolAttack:
    """Add a white-box attack to the protocol, after the others: every table from then on
    runs its rows (with its settings' defaults where a profile's ``EvalSettings`` does not
    hold them) and every caption names it."""
    if not isinstance(attack, ProtocolAttack):
        raise ValueError(f"register_attack({attack!r}): pass a ProtocolAttack record")
    if any(a.name == attack.name for a in PROTOCOL):
        raise ValueError(f"an attack named {attack.name!r} is in the protocol already; "
                         f"choose another name (taken: {', '.join(a.name for a in PROTOCOL)})")
    if not is_dataclass(attack.settings):
        raise ValueError(f"attack {attack.name!r}: settings={attack.settings!r} is not a "
                         "dataclass; give it a frozen dataclass (or NoAttackSettings)")
    PROTOCOL.append(attack)
    return attack


def row_caption(spec: Mapping[str, Any], epsilon: float | None) -> str:
    """The caption text of one row (an :meth:`AttackSpec.describe` dict): its attack's
    caption, or its name."""
    for attack in (*PROTOCOL, SPSA):
        caption = attack.captions.get(spec["attack"])
        if caption is not None:
            return caption(spec, epsilon)
    return spec["name"]
