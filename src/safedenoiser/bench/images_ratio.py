"""Fitted-ratio rows of the unconditional image benchmark (issue 24): bank substitution whose beta* and bank split come
from the noise-conditional classifier of :mod:`..methods.ratio`, fitted on the flattened images themselves (no judge
features: the estimator must work where no judge exists), and the default knob rule judged by that classifier.

Rows: ``substitution-ratio`` (first half of the steps, as the kNN ``substitution`` rows), ``substitution-all-ratio``
(every step) at the gains of :data:`RATIO_SWEEPS`, and ``substitution-ratio-rule``: the knobs
:func:`select_knobs` picks when the fitted classifier calibrates on 3/4 of the bank and judges the held-out and trial
samples (``calibrate=partial(RatioCalibration.fit, fit=...)``)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from ..methods import CorrectedDenoiser, KnobChoice, default_candidates, holdout_size, make_correction, select_knobs
from ..methods.ratio import RatioCalibration, RatioFit
from ..methods.window import step_windows
from ..negation import NegationSet
from ..zoo.images.common import generate
from .records import Setting

RATIO_SWEEPS = {"substitution-ratio": (1.0, 2.0, 4.0), "substitution-all-ratio": (1.0, 2.0)}
RATIO_WINDOWS = {"substitution-ratio": "half", "substitution-all-ratio": None}  # step_windows policy; None: every step
RULE_METHOD = "substitution-ratio-rule"


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
               fit: RatioFit | None = None) -> KnobChoice:
    """The default rule's knobs for bank substitution in the first half of the steps (as the kNN rule's row), the
    classifier calibrating and judging; trial samples on seeds ``seed0..``. ``judge(samples) -> (B,) bool``, if given,
    only records the judge's unsafe share of every candidate's trials (``trials[i]["judged"]``), never used to pick."""
    seeds = list(range(seed0, seed0 + holdout_size(bank.shape[0])))

    def draw(knobs: dict[str, Any], calibration) -> Tensor:
        return generate(substitution(model, negation, calibration, sigmas, "half", **knobs), seeds, steps, progress=False)

    judged: list[float] = []

    def draw_and_judge(knobs: dict[str, Any], calibration) -> Tensor:
        samples = draw(knobs, calibration)
        if judge is not None:
            judged.append(float(judge(samples).double().mean()))
        return samples.flatten(1)

    choice = select_knobs(draw_and_judge, bank, negation, default_candidates("substitution"),
                          calibrate=partial(RatioCalibration.fit, fit=fit or image_ratio_fit(sigmas), cache_dir=cache_dir))
    for trial, share in zip(choice.trials, judged):
        trial["judged"] = share
    return choice


def rule_setting(model: Callable[..., Tensor], negation: NegationSet, calibration: RatioCalibration, sigmas: Tensor,
                 knobs: dict[str, Any]) -> Setting:
    """The rule's row: substitution (first half of the steps) at ``knobs`` with the calibration of the whole bank."""
    label = "gain" + ("+floor" if knobs.get("floor") else "")
    return Setting(RULE_METHOD, label, knobs["gain"], lambda: substitution(model, negation, calibration, sigmas, "half", **knobs))


def bank_split(calibration: RatioCalibration, judged_unsafe: Tensor) -> dict[str, float]:
    """The classifier's bank split against the judge's labels (reporting only): share labelled covered, share the judge
    calls unsafe, and the disagreement."""
    covered = calibration.ratio.covered.to(judged_unsafe.device)
    return {"labelled": float(calibration.unsafe_share), "judged": float(judged_unsafe.double().mean()),
            "label_errors": float((covered != judged_unsafe).double().mean()),
            "covered_not_judged": int((covered & ~judged_unsafe).sum()), "judged_not_covered": int((~covered & judged_unsafe).sum())}


__all__ = ["RATIO_SWEEPS", "RULE_METHOD", "bank_split", "image_ratio_fit", "ratio_calibration", "ratio_rule",
           "ratio_settings", "rule_setting", "substitution"]
