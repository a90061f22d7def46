"""Noise-level schedules: decreasing VE sigmas that end in 0."""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.adapters import linear_alphas_cumprod
from ..models.conversions import ve_sigma_from_alphas_cumprod


class ScheduleError(ValueError):
    """A sigma schedule that the samplers cannot use."""


def check_schedule(sigmas: Tensor) -> Tensor:
    """Validate a schedule: 1-D, at least two entries, finite, strictly decreasing, ending in exactly 0."""
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ScheduleError(f"a schedule is a 1-D tensor of at least two sigmas, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all():
        raise ScheduleError("schedule contains NaN or infinite sigmas")
    if float(sigmas[-1]) != 0.0:
        raise ScheduleError(f"schedule must end in 0 (got last sigma {float(sigmas[-1])!r}); append a zero")
    if not (sigmas[:-1] > sigmas[1:]).all():
        raise ScheduleError("schedule sigmas must be strictly decreasing")
    return sigmas


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """EDM schedule (Karras et al. 2022, Eq. 5): sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, then 0."""
    if steps < 1 or not 0 < sigma_min < sigma_max:
        raise ScheduleError("karras_sigmas needs steps >= 1 and 0 < sigma_min < sigma_max")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def vp_sigmas(steps: int, alphas_cumprod: Tensor | None = None) -> Tensor:
    """DDPM/DDIM timesteps evenly spaced over a discrete VP schedule (default: linear betas, T = 1000),
    as VE sigmas = sqrt((1 - abar_t) / abar_t), from t = T-1 down to 0, then 0."""
    abar = linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.double()
    if not 1 <= steps <= abar.numel():
        raise ScheduleError(f"vp_sigmas needs 1 <= steps <= {abar.numel()}")
    timesteps = torch.linspace(abar.numel() - 1, 0, steps).round().long()
    return torch.cat([ve_sigma_from_alphas_cumprod(abar[timesteps]), torch.zeros(1, dtype=torch.float64)])
