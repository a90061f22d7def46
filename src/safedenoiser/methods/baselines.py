"""Baselines on the same seam: sparse repellency (SPELL) and negative guidance."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..kernels import chunk_sq_distances, compute_dtype
from ..models.adapters import Denoiser
from ..negation import NegationSet
from .base import Correction, Proposal


def repellency_shift(x0: Tensor, points: Tensor, radius: float, chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
    """SPELL (Kirchhof et al. 2024, "Shielded diffusion"): sum_n relu(r - |x0 - x_n|) (x0 - x_n) / |x0 - x_n|.

    Streamed over chunks of ``points`` (N, D) for ``x0`` (B, D); returns the shift (B, D) and the number
    of negation items inside the radius (B,). Written as x0 * sum_n c_n - sum_n c_n x_n with
    c_n = relu(r - d_n) / d_n, so no B x N x D tensor is formed. Accumulated in float64: 1/d_n is
    large when x0 nearly coincides with an item, and float32 cancellation there gives inf - inf.
    """
    dtype = torch.float64 if x0.device.type == "cpu" or x0.dtype == torch.float64 else compute_dtype(x0.dtype)
    x = x0.to(dtype)
    x_sq = (x * x).sum(1)
    coef_sum = torch.zeros(x.shape[0], dtype=dtype, device=x.device)
    weighted = torch.zeros_like(x)
    inside = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, points.shape[0], chunk_size):
        chunk = points[start : start + chunk_size].to(device=x.device, dtype=dtype)
        dist = chunk_sq_distances(x, x_sq, chunk).sqrt_()
        coef = torch.relu(radius - dist) / dist.clamp_min(torch.finfo(dtype).tiny)  # (B, C)
        coef_sum += coef.sum(1)
        weighted += coef @ chunk
        inside += (dist < radius).sum(1)
    return x * coef_sum[:, None] - weighted, inside


class SparseRepellency(Correction):
    """SPELL: push the predicted x0 out of every radius-r ball around a negation item (x0 + repellency_shift)."""

    KNOBS = ("radius",)

    def __init__(self, negation: NegationSet, *, radius: float, **kwargs: Any):
        super().__init__(negation, **kwargs)
        if not radius >= 0 or not math.isfinite(radius):
            raise ValueError(f"radius must be a finite number >= 0, got {radius}")
        self.radius = radius

    @property
    def is_identity(self) -> bool:
        return self.radius == 0 or super().is_identity

    def propose(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Proposal:
        shift, inside = repellency_shift(x0, self.negation.flat, self.radius, self.chunk_size or 4096)
        return Proposal(x0 + shift, inside > 0, {"weight": shift.norm(dim=1), "items_inside": inside})


class NegativeGuidance:
    """D(x) + w (D(x) - D_neg(x)): steer away from a denoiser of the negated concept (the text-free analogue of
    a negative prompt; with CFG the unconditional branch is replaced by the negative one)."""

    def __init__(self, denoiser: Denoiser, negative: Denoiser, weight: float):
        if not math.isfinite(weight):
            raise ValueError(f"guidance weight must be finite, got {weight}")
        self.denoiser, self.negative, self.weight = denoiser, negative, weight

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        x0 = self.denoiser(x, sigma, **cond)
        if self.weight == 0:
            return x0
        return x0 + self.weight * (x0 - self.negative(x, sigma, **cond))
