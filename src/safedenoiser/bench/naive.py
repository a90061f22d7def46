"""The brute-force kernel moments: the reference of the kernel tests and the naive baseline of ``bench kernel``.

From explicit differences x_b - x_n (not the |x|^2 + |x_n|^2 - 2 x . x_n expansion the streamed kernels use), as the
authors' code does: a B x N x D difference tensor, logits l_n = -|x - x_n|^2 / (2 s^2) (or -|x - x_n| / (2 s^2)),
``logsumexp`` and ``softmax`` weights, and the weighted sum of the points, all in the inputs' dtype (give float64
inputs for a reference).
"""

from __future__ import annotations

import torch
from torch import Tensor


def naive_moments(x: Tensor, points: Tensor, bandwidth: Tensor | float, distance: str = "squared",
                  rows: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(log_mass (B,), mean (B, D), max_logit (B,))`` of ``points`` (N, D) at queries ``x`` (B, D); ``bandwidth``
    a number or (B,). ``rows`` queries at a time bound the memory to rows x N x D (default: all B at once)."""
    step = rows or x.shape[0]
    parts = []
    for start in range(0, x.shape[0], step):
        diff = x[start : start + step, None, :] - points[None, :, :]
        sq = diff.square().sum(-1)
        if isinstance(bandwidth, (int, float)):
            scale = 2 * bandwidth**2
        else:
            band = torch.as_tensor(bandwidth, dtype=sq.dtype).reshape(-1).expand(x.shape[0])
            scale = 2 * band[start : start + step, None] ** 2
        logits = -(sq if distance == "squared" else sq.sqrt()) / scale
        weights = torch.softmax(logits, dim=1)
        parts.append((torch.logsumexp(logits, 1), (weights[:, :, None] * points[None, :, :]).sum(1), logits.amax(1)))
    if len(parts) == 1:
        return parts[0]
    log_mass, mean, max_logit = (torch.cat(p) for p in zip(*parts))
    return log_mass, mean, max_logit


def relative_error(value: Tensor, reference: Tensor) -> float:
    """Largest relative error in float64: |v - r| / max(|r|, 1) over entries of a vector, |v_b - r_b| / |r_b| over
    rows of a matrix."""
    value, reference = value.double(), reference.double()
    if reference.ndim == 1:
        return float(((value - reference).abs() / reference.abs().clamp_min(1.0)).max())
    return float(((value - reference).norm(dim=1) / reference.norm(dim=1)).max())
