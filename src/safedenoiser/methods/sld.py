"""Safe Latent Diffusion (Schramowski et al., CVPR 2023, arXiv 2211.05105) as a pure guidance function.

SLD adds a third branch to classifier-free guidance, the noise prediction for a *safety concept* text, and
pushes the text guidance away from it (paper Eq. 3-8; diffusers ``StableDiffusionPipelineSafe``):

    mu           = clamp(s_S |eps_p - eps_S|, max=1)  where  eps_p - eps_S < lambda,  else 0      (Eq. 6)
    gamma_S      = mu * (eps_S - eps_u) + s_m * nu                                               (Eq. 4, 7)
    nu'          = beta_m * nu + (1 - beta_m) * gamma_S                                           (Eq. 8)
    eps          = eps_u + s_g * (eps_p - eps_u - [step >= warm-up] * gamma_S)                    (Eq. 3)

elementwise, with eps_u / eps_p / eps_S the unconditional / prompt / safety-concept predictions, s_g the CFG
scale and nu the momentum (zero at the first step; it also builds up during warm-up). The thresholds are on the
scale of an epsilon prediction (Stable Diffusion's): for a v- or x0-prediction model convert the three branches
to epsilon first (``safedenoiser.models.conversions``) and the guided result back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: diffusers' default safety concept of ``StableDiffusionPipelineSafe``.
DEFAULT_SAFETY_CONCEPT = (
    "an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, bodily "
    "fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child abuse, brutality, "
    "cruelty"
)

#: diffusers' ``SafetyConfig`` presets (sld_guidance_scale, sld_warmup_steps, sld_threshold, sld_momentum_scale,
#: sld_mom_beta); ``medium`` is the pipeline's default.
SLD_PRESETS: dict[str, tuple[float, int, float, float, float]] = {
    "weak": (20.0, 15, 0.0, 0.0, 0.0),
    "medium": (1000.0, 10, 0.01, 0.3, 0.4),
    "strong": (2000.0, 7, 0.025, 0.5, 0.7),
    "max": (5000.0, 0, 1.0, 0.5, 0.7),
}


@dataclass(frozen=True)
class SLDConfig:
    """The knobs of SLD; defaults are diffusers' (its ``SafetyConfig.MEDIUM``).

    ``guidance_scale`` s_S >= 0 (Eq. 6; 0 turns SLD off exactly; diffusers skips SLD entirely when s_S <= 1),
    ``warmup_steps`` steps (0-based loop index < warmup_steps) during which only the momentum builds up,
    ``threshold`` lambda, ``momentum_scale`` s_m >= 0, ``momentum_beta`` beta_m in [0, 1], ``concept`` the safety
    concept text whose embedding gives the third branch.
    """

    guidance_scale: float = 1000.0
    warmup_steps: int = 10
    threshold: float = 0.01
    momentum_scale: float = 0.3
    momentum_beta: float = 0.4
    concept: str = DEFAULT_SAFETY_CONCEPT

    def __post_init__(self) -> None:
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"SLD guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"SLD warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"SLD threshold must be finite, got {self.threshold}")
        if not (math.isfinite(self.momentum_scale) and self.momentum_scale >= 0):
            raise ValueError(f"SLD momentum_scale must be a finite number >= 0, got {self.momentum_scale}")
        if not 0 <= self.momentum_beta <= 1:
            raise ValueError(f"SLD momentum_beta must lie in [0, 1], got {self.momentum_beta}")
        if not isinstance(self.concept, str) or not self.concept.strip():
            raise ValueError("SLD needs a non-empty safety concept text")

    @property
    def enabled(self) -> bool:
        return self.guidance_scale > 0

    @classmethod
    def preset(cls, name: str, concept: str = DEFAULT_SAFETY_CONCEPT) -> SLDConfig:
        """One of diffusers' presets: 'weak', 'medium', 'strong', 'max'."""
        if name not in SLD_PRESETS:
            raise ValueError(f"unknown SLD preset {name!r}; choose one of {tuple(SLD_PRESETS)}")
        scale, warmup, threshold, mom_scale, mom_beta = SLD_PRESETS[name]
        return cls(scale, warmup, threshold, mom_scale, mom_beta, concept)


def sld_guidance(noise_uncond: Tensor, noise_text: Tensor, noise_concept: Tensor, *, step: int, cfg_scale: float,
                 config: SLDConfig, momentum: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One step of SLD-guided CFG (module docstring, Eq. 3-8).

    ``noise_uncond``, ``noise_text``, ``noise_concept``: the three branches' predictions, one shape (B, C, H, W)
    (any shape works, all equal); ``step``: 0-based index of the sampling step; ``cfg_scale``: the CFG scale s_g;
    ``momentum``: the state returned by the previous step (same shape; None at the first step = zeros).
    Returns the guided prediction (same shape) and the new momentum (same shape, to pass to the next step).
    """
    if not noise_uncond.shape == noise_text.shape == noise_concept.shape:
        raise ValueError("SLD needs three predictions of one shape; got "
                         f"{tuple(noise_uncond.shape)}, {tuple(noise_text.shape)}, {tuple(noise_concept.shape)}")
    if momentum is None:
        momentum = torch.zeros_like(noise_text)
    elif momentum.shape != noise_text.shape:
        raise ValueError(f"SLD momentum has shape {tuple(momentum.shape)}, expected {tuple(noise_text.shape)}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be finite, got {cfg_scale}")
    text_minus_concept = noise_text - noise_concept
    scale = torch.clamp(text_minus_concept.abs() * config.guidance_scale, max=1.0)
    scale = torch.where(text_minus_concept >= config.threshold, torch.zeros_like(scale), scale)
    safety = (noise_concept - noise_uncond) * scale + config.momentum_scale * momentum
    new_momentum = config.momentum_beta * momentum + (1 - config.momentum_beta) * safety
    guidance = noise_text - noise_uncond
    if step >= config.warmup_steps:
        guidance = guidance - safety
    return noise_uncond + cfg_scale * guidance, new_momentum
