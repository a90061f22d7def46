"""Methods are denoiser transforms: a :class:`Correction` of the predicted x0, or a denoiser combination."""

from .base import CorrectedDenoiser, Correction, Proposal
from .baselines import NegativeGuidance, SparseRepellency, repellency_shift
from .calibration import Calibration
from .safe import (MODES, CalibratedCorrection, PaperCorrection, ReferenceCodeCorrection, SubstitutionCorrection,
                   make_correction, safe_denoiser)
from .window import Window

__all__ = [
    "MODES", "CalibratedCorrection", "Calibration", "CorrectedDenoiser", "Correction", "NegativeGuidance",
    "PaperCorrection", "Proposal", "ReferenceCodeCorrection", "SparseRepellency", "SubstitutionCorrection", "Window",
    "make_correction", "repellency_shift", "safe_denoiser",
]
