"""safe-denoiser: training-free safe denoisers (arXiv 2502.08011) on one seam, D(x, sigma, **cond) -> x0.

The public names below are imported on first use (PEP 562), so ``import safedenoiser`` (and the command line's
``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "KernelMoments": "kernels", "combine_moments": "kernels", "kernel_moments": "kernels", "nearest_distances": "kernels",
    "MODES": "methods", "Calibration": "methods", "CorrectedDenoiser": "methods", "Correction": "methods",
    "NegativeGuidance": "methods", "SparseRepellency": "methods", "Window": "methods", "make_correction": "methods",
    "safe_denoiser": "methods",
    "Denoiser": "models", "GaussianMixture": "models", "VPModelDenoiser": "models", "make_mixture": "models",
    "NegationSet": "negation", "NegationSetError": "negation",
    "ancestral": "sampling", "ddim": "sampling", "euler": "sampling", "heun": "sampling", "karras_sigmas": "sampling",
    "sample": "sampling", "vp_sigmas": "sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .kernels import KernelMoments, combine_moments, kernel_moments, nearest_distances
    from .methods import (MODES, Calibration, CorrectedDenoiser, Correction, NegativeGuidance, SparseRepellency, Window,
                          make_correction, safe_denoiser)
    from .models import Denoiser, GaussianMixture, VPModelDenoiser, make_mixture
    from .negation import NegationSet, NegationSetError
    from .sampling import ancestral, ddim, euler, heun, karras_sigmas, sample, vp_sigmas
