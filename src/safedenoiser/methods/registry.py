"""Modes by name: the one table from a mode's name to its correction class, and the constructors that use it."""

from __future__ import annotations

from typing import Any

from ..negation import NegationSet
from .base import CorrectedDenoiser, Correction
from .conditional import ConditionalCorrection
from .safe import CalibratedCorrection, PaperCorrection, ReferenceCodeCorrection, SubstitutionCorrection

MODE_CLASSES: dict[str, type[Correction]] = {
    "paper": PaperCorrection,
    "calibrated": CalibratedCorrection,
    "substitution": SubstitutionCorrection,
    "reference": ReferenceCodeCorrection,
    "conditional": ConditionalCorrection,
}
MODES = tuple(MODE_CLASSES)


def make_correction(negation: NegationSet, mode: str = "paper", **knobs: Any) -> Correction:
    """The correction of ``mode`` (a key of :data:`MODE_CLASSES`) with its knobs; ``correction.config`` reads them
    back. ``conditional`` needs ``reference=ReferenceSet(...)``, ``calibrated`` / ``substitution`` a ``calibration``."""
    if mode not in MODE_CLASSES:
        raise ValueError(f"unknown safe-denoiser mode {mode!r}; choose one of {MODES}")
    return MODE_CLASSES[mode](negation, **knobs)


def safe_denoiser(denoiser: Any, negation: NegationSet, mode: str = "paper", **knobs: Any) -> CorrectedDenoiser:
    """The transform Denoiser -> Denoiser: ``D_safe(x, sigma) = correction(x, sigma, D(x, sigma))``."""
    return CorrectedDenoiser(denoiser, make_correction(negation, mode, **knobs))
