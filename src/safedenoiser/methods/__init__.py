"""Methods are denoiser transforms: a :class:`Correction` of the predicted x0, or a denoiser combination."""

from .base import CorrectedDenoiser, Correction, Proposal
from .baselines import NegativeGuidance, SparseRepellency, repellency_shift
from .calibration import GAIN_LADDER, Calibration, KnobChoice, default_candidates, holdout_size, select_knobs
from .conditional import ConditionalCorrection, ReferenceSet, ReferenceSetError, posterior_spread
from .registry import ALIASES, CATALOGUE, MODE_CLASSES, MODES, Method, MethodInputs, Sweep, make_correction, mode_name, safe_denoiser
from .safe import CalibratedCorrection, PaperCorrection, ReferenceCodeCorrection, SubstitutionCorrection, kernel_diagnostics
from .safree import SafreeConfig, leave_one_out_embeddings, safree_embeddings, safree_step_mask
from .sgf import KernelRepulsion
from .sld import SLDConfig, sld_guidance
from .window import Window

__all__ = [
    "MODES", "CalibratedCorrection", "Calibration", "ConditionalCorrection", "CorrectedDenoiser", "Correction", "NegativeGuidance",
    "PaperCorrection", "Proposal", "ReferenceCodeCorrection", "ReferenceSet", "ReferenceSetError", "SparseRepellency", "SubstitutionCorrection", "Window",
    "make_correction", "posterior_spread", "repellency_shift", "safe_denoiser",
    "KernelRepulsion", "SLDConfig", "SafreeConfig", "leave_one_out_embeddings", "safree_embeddings", "safree_step_mask",
    "sld_guidance", "GAIN_LADDER", "KnobChoice", "default_candidates", "holdout_size", "select_knobs", "MODE_CLASSES", "kernel_diagnostics",
    "ALIASES", "CATALOGUE", "Method", "MethodInputs", "Sweep", "mode_name",
]
