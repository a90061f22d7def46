"""Samplers: plain functions ``sample(denoiser, x, sigmas, ...) -> x0`` over a VE schedule ending in 0.

The probability-flow ODE in VE form is dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022), :func:`to_d`.
``callback`` receives a dict (step, x, sigma, sigma_next, denoised) after each step. Stochastic samplers take
``noise_sampler(sigma, sigma_next) -> noise like x`` as k-diffusion's do (default: the per-seed
:class:`~safedenoiser.sampling.noise.SeededNoise` passed as ``noise``), so k-diffusion-style samplers drop in.
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
NoiseSampler = Callable[[Tensor, Tensor], Tensor]


def _steps(sigmas: Tensor, progress: bool):
    pairs = list(zip(sigmas[:-1], sigmas[1:]))
    return tqdm(list(enumerate(pairs)), desc="sampling", leave=False) if progress else enumerate(pairs)


def _denoise(denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: dict[str, Any]) -> Tensor:
    return denoiser(x, sigma.to(x.dtype).expand(x.shape[0]), **cond)


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow slope dx/dsigma = (x - D(x, sigma)) / sigma (k-diffusion's ``to_d``), for a scalar sigma."""
    return (x - denoised) / sigma.to(x.dtype)


def euler(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: dict[str, Any] | None = None,
          callback: StepCallback | None = None, progress: bool = False) -> Tensor:
    """First-order Euler on the probability-flow ODE: x <- x + (sigma' - sigma) (x - D) / sigma."""
    sigmas = check_schedule(sigmas).to(x.device)
    for i, (sigma, sigma_next) in _steps(sigmas, progress):
        denoised = _denoise(denoiser, x, sigma, cond or {})
        x = x + (sigma_next - sigma).to(x.dtype) * (x - denoised) / sigma.to(x.dtype)  # dt (x - D) / sigma in this order (dt * to_d rounds differently)
        if callback:
            callback({"step": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


def heun(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: dict[str, Any] | None = None,
         callback: StepCallback | None = None, progress: bool = False) -> Tensor:
    """EDM's second-order Heun sampler (Karras et al. 2022, Alg. 1 without churn); Euler on the last step."""
    sigmas = check_schedule(sigmas).to(x.device)
    for i, (sigma, sigma_next) in _steps(sigmas, progress):
        denoised = _denoise(denoiser, x, sigma, cond or {})
        slope = to_d(x, sigma, denoised)
        x_next = x + (sigma_next - sigma).to(x.dtype) * slope
        if sigma_next > 0:
            slope_next = to_d(x_next, sigma_next, _denoise(denoiser, x_next, sigma_next, cond or {}))
            x_next = x + (sigma_next - sigma).to(x.dtype) * (slope + slope_next) / 2
        x = x_next
        if callback:
            callback({"step": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


def ddim(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, eta: float = 0.0, noise: SeededNoise | None = None,
         noise_sampler: NoiseSampler | None = None, cond: dict[str, Any] | None = None,
         callback: StepCallback | None = None, progress: bool = False) -> Tensor:
    """DDIM (Song et al. 2021) in VE form: x' = D + sigma_down * (x - D) / sigma + sigma_up * n.

    With eta = 0 it is deterministic (and equals Euler); eta = 1 is DDPM's ancestral sampler, with
    sigma_up = eta * sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2) and sigma_down = sqrt(sigma'^2 - sigma_up^2).
    ``n`` comes from ``noise_sampler(sigma, sigma')``, or from ``noise.draw()`` (the per-seed source).
    """
    if eta < 0:
        raise ValueError(f"ddim eta must be >= 0, got {eta}")
    if noise is not None and noise_sampler is not None:
        raise ValueError("give ddim either noise (a SeededNoise) or noise_sampler, not both")
    if noise is not None:
        noise_sampler = noise
    if eta > 0 and noise_sampler is None:
        raise ValueError("ddim with eta > 0 needs a noise source: noise=SeededNoise (see initial_noise) or "
                         "noise_sampler(sigma, sigma_next)")
    sigmas = check_schedule(sigmas).to(x.device)
    for i, (sigma, sigma_next) in _steps(sigmas, progress):
        denoised = _denoise(denoiser, x, sigma, cond or {})
        sigma_up = torch.clamp(eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt(), max=sigma_next)
        sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
        x = denoised + (sigma_down / sigma).to(x.dtype) * (x - denoised)
        if eta > 0 and sigma_next > 0:
            x = x + sigma_up.to(x.dtype) * noise_sampler(sigma, sigma_next)
        if callback:
            callback({"step": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


def ancestral(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: SeededNoise | None = None, eta: float = 1.0,
              noise_sampler: NoiseSampler | None = None, **kwargs: Any) -> Tensor:
    """Ancestral (DDPM-like) stochastic sampler: :func:`ddim` with eta = 1 by default."""
    return ddim(denoiser, x, sigmas, eta=eta, noise=noise, noise_sampler=noise_sampler, **kwargs)


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
    if sampler in ("ddim", "ancestral") and kwargs.get("noise_sampler") is None:
        kwargs.setdefault("noise", noise)
    return fn(denoiser, x, sigmas, **kwargs)

