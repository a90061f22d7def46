"""Adapters from networks to the seam ``D(x, sigma, **cond) -> x0`` (VE form, EDM / k-diffusion convention)."""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from .conversions import (VP_PREDICTIONS, VPPrediction, batch_view, ve_sigma_from_alphas_cumprod, vp_from_ve,
                          x0_from_prediction)


class Denoiser(Protocol):
    """``x`` (B, ...) = x0 + sigma * n, ``sigma`` (B,) -> estimate of E[x0 | x] with the shape of ``x``."""

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor: ...


class VPModelDenoiser(nn.Module):
    """Denoiser from ``model(x_t, t, **cond)`` trained on a discrete VP schedule ``alphas_cumprod`` (T,).

    The VE input is rescaled to ``x_t = alpha x`` with ``alpha = 1/sqrt(1 + sigma^2)``; the timestep fed to
    the model is the (fractional) index whose schedule sigma matches, interpolated in log-sigma; the
    output is converted to x0 according to ``prediction`` (eps, v or x0). ``timestep_dtype`` lets
    integer-timestep models receive rounded steps.
    """

    def __init__(self, model: Callable[..., Tensor], alphas_cumprod: Tensor, prediction: VPPrediction = "eps",
                 round_timesteps: bool = False):
        super().__init__()
        if prediction not in VP_PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; expected 'eps', 'v' or 'x0'")
        self.model = model
        self.prediction = prediction
        self.round_timesteps = round_timesteps
        self.register_buffer("log_sigmas", ve_sigma_from_alphas_cumprod(alphas_cumprod.double()).log())

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional timestep whose schedule sigma equals ``sigma`` (clamped to the schedule's range)."""
        log_sigma = sigma.double().log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        high = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, len(self.log_sigmas) - 1)
        low = high - 1
        frac = (log_sigma - self.log_sigmas[low]) / (self.log_sigmas[high] - self.log_sigmas[low])
        t = low + frac
        return t.round() if self.round_timesteps else t

    def forward(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        alpha, s = (batch_view(v, x) for v in vp_from_ve(sigma))
        x_t = alpha * x
        out = self.model(x_t, self.sigma_to_t(sigma).to(x.dtype), **cond)
        return x0_from_prediction(self.prediction, x_t, out, alpha, s)


def linear_alphas_cumprod(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear beta schedule (Ho et al. 2020) as cumulative alphas (steps,), float64."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's scaled-linear schedule (betas linear in sqrt) as cumulative alphas, float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)
