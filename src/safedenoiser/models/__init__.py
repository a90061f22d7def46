"""Model adapters into the seam ``D(x, sigma, **cond) -> x0``, and analytic models."""

from .adapters import Denoiser, VPModelDenoiser, linear_alphas_cumprod, scaled_linear_alphas_cumprod
from .mixture import GaussianMixture, make_mixture, make_ring_mixture

__all__ = ["Denoiser", "GaussianMixture", "VPModelDenoiser", "linear_alphas_cumprod", "make_mixture", "make_ring_mixture",
           "scaled_linear_alphas_cumprod"]
