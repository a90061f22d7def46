"""Samplers: plain functions ``sample(denoiser, x, sigmas, ...) -> x0`` over a VE schedule ending in 0.

The probability-flow ODE in VE form is dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022).
``callback`` receives a dict (step, x, sigma, sigma_next, denoised) after each step.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..models.adapters import Denoiser
from .noise import SeededNoise, initial_noise
from .schedules import check_schedule

StepCallback = Callable[[dict[str, Any]], None]


def _steps(sigmas: Tensor, progress: bool):
    pairs = list(zip(sigmas[:-1], sigmas[1:]))
    return tqdm(list(enumerate(pairs)), desc="sampling", leave=False) if progress else enumerate(pairs)


def _denoise(denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: dict[str, Any]) -> Tensor:
    return denoiser(x, sigma.to(x.dtype).expand(x.shape[0]), **cond)


def euler(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: dict[str, Any] | None = None,
          callback: StepCallback | None = None, progress: bool = False) -> Tensor:
    """First-order Euler on the probability-flow ODE: x <- x + (sigma' - sigma) (x - D) / sigma."""
    sigmas = check_schedule(sigmas).to(x.device)
    for i, (sigma, sigma_next) in _steps(sigmas, progress):
        denoised = _denoise(denoiser, x, sigma, cond or {})
        x = x + (sigma_next - sigma).to(x.dtype) * (x - denoised) / sigma.to(x.dtype)
        if callback:
            callback({"step": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


def heun(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: dict[str, Any] | None = None,
         callback: StepCallback | None = None, progress: bool = False) -> Tensor:
    """EDM's second-order Heun sampler (Karras et al. 2022, Alg. 1 without churn); Euler on the last step."""
    sigmas = check_schedule(sigmas).to(x.device)
    for i, (sigma, sigma_next) in _steps(sigmas, progress):
        denoised = _denoise(denoiser, x, sigma, cond or {})
        slope = (x - denoised) / sigma.to(x.dtype)
        x_next = x + (sigma_next - sigma).to(x.dtype) * slope
        if sigma_next > 0:
            slope_next = (x_next - _denoise(denoiser, x_next, sigma_next, cond or {})) / sigma_next.to(x.dtype)
            x_next = x + (sigma_next - sigma).to(x.dtype) * (slope + slope_next) / 2
        x = x_next
        if callback:
            callback({"step": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


def ddim(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, eta: float = 0.0, noise: SeededNoise | None = None,
         cond: dict[str, Any] | None = None, callback: StepCallback | None = None, progress: bool = False) -> Tensor:
    """DDIM (Song et al. 2021) in VE form: x' = D + sigma_down * (x - D) / sigma + sigma_up * n.

    With eta = 0 it is deterministic (and equals Euler); eta = 1 is DDPM's ancestral sampler, with
    sigma_up = eta * sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2) and sigma_down = sqrt(sigma'^2 - sigma_up^2).
    """
    if eta < 0:
        raise ValueError(f"ddim eta must be >= 0, got {eta}")
    if eta > 0 and noise is None:
        raise ValueError("ddim with eta > 0 needs a SeededNoise source (see initial_noise)")
    sigmas = check_schedule(sigmas).to(x.device)
    for i, (sigma, sigma_next) in _steps(sigmas, progress):
        denoised = _denoise(denoiser, x, sigma, cond or {})
        sigma_up = torch.clamp(eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt(), max=sigma_next)
        sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
        x = denoised + (sigma_down / sigma).to(x.dtype) * (x - denoised)
        if eta > 0 and sigma_next > 0:
            x = x + sigma_up.to(x.dtype) * noise.draw()
        if callback:
            callback({"step": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


def ancestral(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: SeededNoise, eta: float = 1.0,
              **kwargs: Any) -> Tensor:
    """Ancestral (DDPM-like) stochastic sampler: :func:`ddim` with eta = 1 by default."""
    return ddim(denoiser, x, sigmas, eta=eta, noise=noise, **kwargs)


SAMPLERS: dict[str, Callable[..., Tensor]] = {"euler": euler, "heun": heun, "ddim": ddim, "ancestral": ancestral}


def get_sampler(name: str) -> Callable[..., Tensor]:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def sample(denoiser: Denoiser, seeds: list[int], item_shape: tuple[int, ...], sigmas: Tensor, *, sampler: str = "heun",
           dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", **kwargs: Any) -> Tensor:
    """Draw one sample per seed: initial noise from the seed, then ``sampler`` along ``sigmas``."""
    sigmas = check_schedule(sigmas)
    x, noise = initial_noise(seeds, item_shape, float(sigmas[0]), dtype, device)
    fn = get_sampler(name=sampler)
    if sampler in ("ddim", "ancestral"):
        kwargs.setdefault("noise", noise)
    return fn(denoiser, x, sigmas, **kwargs)

