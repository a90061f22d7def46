"""SGF-style kernel repulsion (Kim et al., ICLR 2026, code github MingyuKim87/SGF) as a :class:`Correction`.

    x0' = x0 + c * sum_m k_m (x0 - y_m),      k_m = exp(-gamma |x0 - y_m|^2)       (an unnormalised sum)
    gamma = -log(0.05) / r^2,   r^2 = mean of the 4th-6th smallest squared distances from the batch's x0 to the set

so the kernel is about 0.05 at a few nearest negation items. With bandwidth s^2 = 1 / (2 gamma) the sum is
exp(log_mass) (x0 - E), where log_mass and the kernel mean E are :func:`~safedenoiser.kernels.kernel_moments`
(log-space, streamed, no B x N x D tensor). A smooth cousin of SPELL (:class:`SparseRepellency`).

Differences from the authors' code: their gradient carries a factor -2 gamma (``dK_dX``), here absorbed in c
with the repulsive sign; they apply it in a window of early steps (``window`` here), then re-noise.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..kernels import min_bandwidth, nearest_neighbours
from ..negation import NegationSet
from .base import Correction, Proposal

KERNEL_AT_NEIGHBOURS = 0.05
LOG_INV_KERNEL = -math.log(KERNEL_AT_NEIGHBOURS)
BANDWIDTHS = ("batch", "sample")


class KernelRepulsion(Correction):
    """SGF repulsion (module docstring). ``scale`` c (SGF: 0.03 on SD latents), ``ranks`` (first, last): the
    1-based neighbour ranks averaged for r^2 (SGF: 4 to 6), ``bandwidth``: ``"batch"`` one gamma from all rows
    (SGF; it depends on the batch's composition) or ``"sample"`` one per row (independent of how requests are
    batched), ``log_threshold``: active only where log sum_m k_m exceeds it (default: always),
    ``window``: the noise levels where it acts (SGF: t from 1000 to 800, or 600, of 1000).

    Diagnostics: ``weight`` c sum_m k_m, ``log_kernel_mass`` log sum_m k_m, ``gamma``, ``max_kernel_weight``
    (the largest k_m over sum k_m), ``shift_norm`` |x0' - x0|.
    """

    KNOBS = ("scale", "ranks", "bandwidth", "log_threshold")

    def __init__(self, negation: NegationSet, *, scale: float = 0.03, ranks: tuple[int, int] = (4, 6),
                 bandwidth: str = "batch", log_threshold: float = -math.inf, **kwargs: Any):
        super().__init__(negation, **kwargs)
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
        first, last = ranks
        if not (isinstance(first, int) and isinstance(last, int) and 1 <= first <= last):
            raise ValueError(f"ranks must be integers 1 <= first <= last, got {ranks}")
        if last > len(negation):
            raise ValueError(f"ranks go up to the {last}-th nearest item but the negation set has {len(negation)}")
        if bandwidth not in BANDWIDTHS:
            raise ValueError(f"unknown bandwidth {bandwidth!r}; choose one of {BANDWIDTHS}")
        if math.isnan(log_threshold):
            raise ValueError("log_threshold must not be NaN")
        self.scale, self.ranks, self.bandwidth, self.log_threshold = scale, (first, last), bandwidth, log_threshold

    @property
    def is_identity(self) -> bool:
        return self.scale == 0 or super().is_identity

    def gamma(self, x0: Tensor) -> Tensor:
        """(B,) gamma = -log(0.05) / r^2 for flattened x0 (B, D).

        r^2 is floored at 16 eps (|x0|^2 + max_n |y_n|^2), and where the bandwidth would fall below
        :func:`~safedenoiser.kernels.min_bandwidth`: below, the rounding of the squared-distance expansion would
        dominate the kernel's logits (x0 on top of duplicated items would give r^2 = 0 and an infinite gamma).
        Data whose squared distances are that small (about 1e-18 in float32) get a wider kernel than SGF's."""
        first, last = self.ranks
        dist, _ = nearest_neighbours(x0, self.negation.flat, last)
        sq = dist[:, first - 1 : last].square().mean(1)  # (B,)
        if self.bandwidth == "batch":
            sq = sq.mean().expand_as(sq)
        magnitude = (x0 * x0).sum(1) + self.negation.squared_norms(x0.dtype).max()
        if self.bandwidth == "batch":
            magnitude = magnitude.max().expand_as(magnitude)
        smallest = 2 * LOG_INV_KERNEL * min_bandwidth(x0.dtype) ** 2 * (1 + 1e-3)  # s^2 = r^2 / (2 log 20)
        floor = (16 * torch.finfo(x0.dtype).eps * magnitude).clamp_min(smallest)
        return LOG_INV_KERNEL / torch.maximum(sq, floor)

    def propose(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Proposal:
        gamma = self.gamma(x0)
        moments = self.negation.moments(x0, torch.rsqrt(2 * gamma), chunk_size=self.chunk_size)
        weight = self.scale * torch.exp(moments.log_mass)
        shift = weight[:, None] * (x0 - moments.mean)
        return Proposal(x0 + shift, moments.log_mass > self.log_threshold,
                        {"weight": weight, "log_kernel_mass": moments.log_mass, "gamma": gamma,
                         "max_kernel_weight": torch.exp(moments.max_logit - moments.log_mass),
                         "shift_norm": shift.norm(dim=1)})
