"""safe-denoiser: training-free safe denoisers (arXiv 2502.08011) on one seam, D(x, sigma, **cond) -> x0."""

from .kernels import KernelMoments, combine_moments, kernel_moments, nearest_distances
from .methods import (MODES, Calibration, CorrectedDenoiser, Correction, NegativeGuidance, SparseRepellency, Window,
                      make_correction, safe_denoiser)
from .models import Denoiser, GaussianMixture, VPModelDenoiser, make_mixture
from .negation import NegationSet, NegationSetError
from .sampling import ancestral, ddim, euler, heun, karras_sigmas, sample, vp_sigmas

__version__ = "0.1.0"

__all__ = [
    "MODES", "Calibration", "CorrectedDenoiser", "Correction", "Denoiser", "GaussianMixture", "KernelMoments",
    "NegationSet", "NegationSetError", "NegativeGuidance", "SparseRepellency", "VPModelDenoiser", "Window",
    "ancestral", "combine_moments", "ddim", "euler", "heun", "karras_sigmas", "kernel_moments", "make_correction", "make_mixture",
    "nearest_distances", "safe_denoiser", "sample", "vp_sigmas",
]
