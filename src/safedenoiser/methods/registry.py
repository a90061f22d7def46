"""Modes by name: the one table from a mode's name to its correction class, and the constructors that use it."""

from __future__ import annotations

import inspect
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
    foreign = sorted(set(knobs) - accepted_knobs(MODE_CLASSES[mode]))
    if foreign:
        owners = sorted(m for m, cls in MODE_CLASSES.items() if set(foreign) <= accepted_knobs(cls))
        hint = f" (they belong to mode {', '.join(owners)})" if owners else ""
        raise ValueError(f"mode {mode!r} does not take {', '.join(foreign)}{hint}; its knobs: "
                         f"{', '.join(sorted(accepted_knobs(MODE_CLASSES[mode])))}")
    return MODE_CLASSES[mode](negation, **knobs)


def accepted_knobs(cls: type) -> set[str]:
    """Keyword arguments the constructor of ``cls`` accepts, following ``**kwargs`` up its base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names - {"self", "negation"}


def safe_denoiser(denoiser: Any, negation: NegationSet, mode: str = "paper", **knobs: Any) -> CorrectedDenoiser:
    """The transform Denoiser -> Denoiser: ``D_safe(x, sigma) = correction(x, sigma, D(x, sigma))``."""
    return CorrectedDenoiser(denoiser, make_correction(negation, mode, **knobs))
