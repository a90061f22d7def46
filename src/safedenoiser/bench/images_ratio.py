"""Fitted-ratio rows of the unconditional image benchmark (issue 24): bank substitution whose beta* and bank split come
from the noise-conditional classifier of :mod:`..methods.ratio`, fitted on the flattened images themselves (no judge
features: the estimator must work where no judge exists), and the default knob rule judged by that classifier.

Rows: ``substitution-ratio`` (first half of the steps, as the kNN ``substitution`` rows), ``substitution-all-ratio``
(every step) at the gains of :data:`RATIO_SWEEPS`, and ``substitution-ratio-rule``: the knobs
:func:`select_knobs` picks when the fitted classifier calibrates on 3/4 of the bank (``calibrate=partial(RatioCalibration.fit,
fit=...)``) and splits its held-out part. By default (:func:`ratio_rule`) the rule tries the window too (:func:`rule_candidates`:
first half of the steps or every step) and counts covered trial samples with an independently fitted conv classifier
(``judge=rule_judge(...)``, a soft count); ``windows=("half",), independent_judge=False`` is the first version (first
half only, counted by the calibration's own classifier)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from ..methods import CorrectedDenoiser, KnobChoice, default_candidates, holdout_size, make_correction, select_knobs
from ..methods.ratio import RatioCalibration, RatioFit, rule_judge
from ..methods.window import step_windows
from ..negation import NegationSet
from ..zoo.images.common import generate
from .records import Setting

RATIO_SWEEPS = {"substitution-ratio": (1.0, 2.0, 4.0), "substitution-all-ratio": (1.0, 2.0)}
RATIO_WINDOWS = {"substitution-ratio": "half", "substitution-all-ratio": None}  # step_windows policy; None: every step
RULE_METHOD = "substitution-ratio-rule"
RULE_WINDOWS = {"half": "half", "all": None}  # the rule's window knob -> step_windows policy (None: every step)
EVERY_STEP_GAINS = (0.5, 1.0, 2.0, 4.0)


def rule_candidates(windows: tuple[str, ...] = ("half", "all")) -> list[dict[str, Any]]:
    """The knobs the rule tries: for ``half`` the substitution candidates of :func:`default_candidates` (gain ladder, the
    floor at gain 1) in the first half of the steps; for ``all`` the gains :data:`EVERY_STEP_GAINS` at every step (a
    weaker correction over the whole trajectory instead of a stronger one in its first half)."""
    unknown = set(windows) - set(RULE_WINDOWS)
    if unknown or not windows:
        raise ValueError(f"rule windows must be among {sorted(RULE_WINDOWS)}, got {windows}")
    out = [{"window": "half", **knobs} for knobs in default_candidates("substitution")] if "half" in windows else []
    return out + ([{"window": "all", "gain": g} for g in EVERY_STEP_GAINS] if "all" in windows else [])


def image_ratio_fit(sigmas: Tensor, seed: int = 0, **settings: Any) -> RatioFit:
    """The classifier settings of the image rows: trained over the sampler's sigma range (floor: RatioFit's 0.05);
    ``settings``: other :class:`RatioFit` fields."""
    return RatioFit(sigma_max=float(sigmas[0]), seed=seed, **settings)


def ratio_calibration(bank: Tensor, negation: NegationSet, sigmas: Tensor, cache_dir: str | Path | None = None,
                      progress: bool = True, fit: RatioFit | None = None) -> RatioCalibration:
    """The fitted-ratio calibration of the whole bank (cached by content under ``cache_dir``); ``fit`` defaults to
    :func:`image_ratio_fit`."""
    return RatioCalibration.fit(bank, negation, fit or image_ratio_fit(sigmas), cache_dir=cache_dir, progress=progress)


def substitution(model: Callable[..., Tensor], negation: NegationSet, calibration, sigmas: Tensor, window: str | None,
                 **knobs: Any) -> CorrectedDenoiser:
    """Bank substitution with ``calibration`` in the ``window`` policy of :func:`step_windows` (None: every step)."""
    win = step_windows(sigmas)[window] if window is not None else None
    return CorrectedDenoiser(model, make_correction(negation, "substitution", calibration=calibration, window=win, **knobs))


def ratio_settings(model: Callable[..., Tensor], negation: NegationSet, calibration: RatioCalibration, sigmas: Tensor,
                   sweeps: dict[str, tuple[float, ...]] = RATIO_SWEEPS) -> list[Setting]:
    """One :class:`Setting` per method and gain of ``sweeps`` with the fitted-ratio ``calibration``."""
    return [Setting(method, "gain", gain, lambda m=method, g=gain: substitution(model, negation, calibration, sigmas,
                                                                             RATIO_WINDOWS[m], gain=g))
            for method, gains in sweeps.items() for gain in gains]


def ratio_rule(model: Callable[..., Tensor], negation: NegationSet, bank: Tensor, sigmas: Tensor, steps: int,
               seed0: int, judge: Callable[[Tensor], Tensor] | None = None, cache_dir: str | Path | None = None,
               fit: RatioFit | None = None, windows: tuple[str, ...] = ("half", "all"),
               independent_judge: bool = True) -> KnobChoice:
    """The default rule's knobs for bank substitution (:func:`rule_candidates` of ``windows``), the classifier
    calibrating; trial samples on seeds ``seed0..``. ``independent_judge``: trial samples are counted by
    :func:`rule_judge` (a conv classifier fitted on the calibration's split, soft count) instead of the calibration's
    own classifier. ``judge(samples) -> (B,) bool``, if given, only records the judge's unsafe share of every
    candidate's trials (``trials[i]["judged"]``), never used to pick."""
    seeds = list(range(seed0, seed0 + holdout_size(bank.shape[0])))

    def draw(knobs: dict[str, Any], calibration) -> Tensor:
        window = RULE_WINDOWS[knobs.pop("window", "half")]
        return generate(substitution(model, negation, calibration, sigmas, window, **knobs), seeds, steps, progress=False)

    judged: list[float] = []

    def draw_and_judge(knobs: dict[str, Any], calibration) -> Tensor:
        samples = draw(knobs, calibration)
        if judge is not None:
            judged.append(float(judge(samples).double().mean()))
        return samples.flatten(1)

    choice = select_knobs(draw_and_judge, bank, negation, rule_candidates(windows),
                          calibrate=partial(RatioCalibration.fit, fit=fit or image_ratio_fit(sigmas), cache_dir=cache_dir),
                          judge=rule_judge(negation, cache_dir=cache_dir) if independent_judge else None)
    for trial, share in zip(choice.trials, judged):
        trial["judged"] = share
    return choice


def rule_setting(model: Callable[..., Tensor], negation: NegationSet, calibration: RatioCalibration, sigmas: Tensor,
                 knobs: dict[str, Any]) -> Setting:
    """The rule's row: substitution at ``knobs`` (its ``window``, default the first half of the steps) with the
    calibration of the whole bank."""
    knobs = dict(knobs)
    window = knobs.pop("window", "half")
    label = "gain" + ("+floor" if knobs.get("floor") else "") + ("" if window == "half" else f" ({window} steps)")
    return Setting(RULE_METHOD, label, knobs["gain"],
                   lambda: substitution(model, negation, calibration, sigmas, RULE_WINDOWS[window], **knobs))


def bank_split(calibration: RatioCalibration, judged_unsafe: Tensor) -> dict[str, float]:
    """The classifier's bank split against the judge's labels (reporting only): share labelled covered, share the judge
    calls unsafe, and the disagreement."""
    covered = calibration.ratio.covered.to(judged_unsafe.device)
    return {"labelled": float(calibration.unsafe_share), "judged": float(judged_unsafe.double().mean()),
            "label_errors": float((covered != judged_unsafe).double().mean()),
            "covered_not_judged": int((covered & ~judged_unsafe).sum()), "judged_not_covered": int((~covered & judged_unsafe).sum())}


__all__ = ["RATIO_SWEEPS", "RULE_METHOD", "RULE_WINDOWS", "bank_split", "rule_candidates", "image_ratio_fit", "ratio_calibration", "ratio_rule",
           "ratio_settings", "rule_setting", "substitution"]
