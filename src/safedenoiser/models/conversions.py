"""The one place where noise parametrisations are converted (pure math, shapes broadcast).

VE form (the seam):   x = x0 + sigma * n
VP form (models):     x_t = alpha * x0 + s * n,   so  x = x_t / alpha,  sigma = s / alpha
Flow matching:        x_t = (1 - s) x0 + s n,     v = n - x0
"""

from __future__ import annotations

import torch
from torch import Tensor


def vp_from_ve(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, s) of the variance-preserving process with the same signal-to-noise ratio as VE ``sigma``."""
    alpha = torch.rsqrt(1 + sigma * sigma)
    return alpha, sigma * alpha


def ve_sigma_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for a discrete DDPM schedule."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """x0 = (x_t - s eps) / alpha."""
    return (x_t - s * eps) / alpha


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """eps = (x_t - alpha x0) / s."""
    return (x_t - alpha * x0) / s


def x0_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """x0 = alpha x_t - s v, for v = alpha eps - s x0 with alpha^2 + s^2 = 1 (Salimans & Ho)."""
    return alpha * x_t - s * v


def v_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """v = (alpha x_t - x0) / s, the inverse of :func:`x0_from_v` when alpha^2 + s^2 = 1."""
    return (alpha * x_t - x0) / s


def x0_from_flow(x_t: Tensor, velocity: Tensor, s: Tensor) -> Tensor:
    """x0 = x_t - s v for rectified flow x_t = (1 - s) x0 + s n, v = n - x0."""
    return x_t - s * velocity


def flow_from_x0(x_t: Tensor, x0: Tensor, s: Tensor) -> Tensor:
    """v = (x_t - x0) / s, the inverse of :func:`x0_from_flow`."""
    return (x_t - x0) / s


def batch_view(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample values (B,) to broadcast against ``like`` (B, ...)."""
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
