"""Gaussian-kernel moments of a negation set, streamed and in log-space.

For a query ``x`` (B, D), points ``x_n`` (N, D) and a bandwidth per query, the kernel logits are

    l_n(x) = -|x - x_n|^2 / (2 sigma^2)          (squared distance: the noising kernel q_t)
    l_n(x) = -|x - x_n|   / (2 s^2)              (plain distance: the authors' public code)

and this module returns ``log_mass = logsumexp_n l_n`` and ``mean = sum_n softmax(l)_n x_n``.
Up to the row constant ``-|x|^2 / (2 sigma^2)`` the squared-distance logits are the attention logits
``(x . x_n - |x_n|^2 / 2) / sigma^2``, so one pass over the points with an online log-sum-exp (the
flash-attention recurrence) gives both moments exactly, with memory O(B x chunk + B x D + chunk x D)
and never a B x N x D tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Distance = Literal["squared", "euclidean"]
DEFAULT_CHUNK = 4096


@dataclass
class KernelMoments:
    """``log_mass`` (B,) = log sum_n exp(l_n); ``mean`` (B, D) = softmax(l)-weighted mean of the points.

    ``max_logit`` (B,) is the largest single logit, so ``exp(max_logit - log_mass)`` is the largest
    normalised weight (1 means the estimate is one negation item).
    """

    log_mass: Tensor
    mean: Tensor | None
    max_logit: Tensor


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 if any input is float64, else float32 (float16/bfloat16 storage)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def batch_sigma(sigma: Tensor | float, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Broadcast a scalar or (B,) noise level to a (B,) tensor, checking that it is positive and finite."""
    sigma = torch.as_tensor(sigma, dtype=dtype, device=device).reshape(-1)
    if sigma.numel() == 1:
        sigma = sigma.expand(batch)
    if sigma.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape ({batch},), got {tuple(sigma.shape)}")
    return sigma


def squared_norms(points: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """|x_n|^2 for (N, D) points, accumulated in ``dtype`` (default: :func:`compute_dtype`)."""
    dtype = dtype or compute_dtype(points.dtype)
    out = torch.empty(points.shape[0], dtype=dtype, device=points.device)
    for start in range(0, points.shape[0], DEFAULT_CHUNK):
        chunk = points[start : start + DEFAULT_CHUNK].to(dtype)
        out[start : start + chunk.shape[0]] = (chunk * chunk).sum(1)
    return out


def kernel_moments(
    x: Tensor,
    points: Tensor,
    bandwidth: Tensor | float,
    *,
    point_sq_norms: Tensor | None = None,
    distance: Distance = "squared",
    with_mean: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
) -> KernelMoments:
    """Stream the kernel moments of ``points`` (N, D) at queries ``x`` (B, D).

    ``bandwidth`` is sigma (squared distance) or s (plain distance), scalar or (B,).
    ``point_sq_norms`` (N,) may be cached by the caller (see :class:`~safedenoiser.NegationSet`).
    """
    if x.ndim != 2 or points.ndim != 2 or x.shape[1] != points.shape[1]:
        raise ValueError(f"kernel_moments needs x (B, D) and points (N, D); got {tuple(x.shape)} and {tuple(points.shape)}")
    if points.shape[0] == 0:
        raise ValueError("kernel_moments needs at least one point")
    if distance not in ("squared", "euclidean"):
        raise ValueError(f"unknown distance {distance!r}; expected 'squared' or 'euclidean'")
    dtype = compute_dtype(x.dtype, points.dtype)
    batch, dim = x.shape
    xs = x.to(dtype)
    x_sq = (xs * xs).sum(1)  # (B,)
    band = batch_sigma(bandwidth, batch, dtype, x.device)
    inv_two_band_sq = 0.5 / (band * band)  # (B,)

    run_max = torch.full((batch,), -math.inf, dtype=dtype, device=x.device)
    run_sum = torch.zeros(batch, dtype=dtype, device=x.device)
    acc = torch.zeros(batch, dim, dtype=dtype, device=x.device) if with_mean else None
    for start in range(0, points.shape[0], chunk_size):
        chunk = points[start : start + chunk_size].to(device=x.device, dtype=dtype)  # (C, D)
        if point_sq_norms is None:
            chunk_sq = (chunk * chunk).sum(1)
        else:
            chunk_sq = point_sq_norms[start : start + chunk.shape[0]].to(device=x.device, dtype=dtype)
        sq_dist = torch.addmm(x_sq[:, None] + chunk_sq[None, :], xs, chunk.T, alpha=-2.0).clamp_min_(0)  # (B, C)
        if distance == "squared":
            logits = sq_dist.mul_(-inv_two_band_sq[:, None])
        else:
            logits = sq_dist.sqrt_().mul_(-inv_two_band_sq[:, None])
        new_max = torch.maximum(run_max, logits.amax(1))
        rescale = torch.exp(run_max - new_max)  # (B,), 0 on the first chunk
        weights = torch.exp(logits.sub_(new_max[:, None]))  # (B, C), in (0, 1]
        run_sum = run_sum * rescale + weights.sum(1)
        if acc is not None:
            acc = torch.addmm(acc * rescale[:, None], weights, chunk)
        run_max = new_max
    mean = acc / run_sum[:, None] if acc is not None else None
    return KernelMoments(log_mass=run_max + torch.log(run_sum), mean=mean, max_logit=run_max)


def gaussian_log_normaliser(dim: int, sigma: Tensor) -> Tensor:
    """log of (2 pi sigma^2)^(-D/2), the normalising constant of an isotropic Gaussian in D dimensions."""
    return -0.5 * dim * torch.log(2 * math.pi * sigma * sigma)



def nearest_neighbours(queries: Tensor, points: Tensor, k: int = 1, *, exclude_self: bool = False,
                       chunk_size: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Euclidean distances (B, k) and indices (B, k) of the k nearest points (N, D) to each query (B, D),
    ascending, streamed over chunks of points (memory O(B x (chunk + k))).

    With ``exclude_self`` the queries must be the points themselves and each query's own row is skipped
    (leave-one-out neighbours).
    """
    if exclude_self and queries.shape != points.shape:
        raise ValueError("exclude_self needs queries identical to points")
    available = points.shape[0] - int(exclude_self)
    if not 1 <= k <= available:
        raise ValueError(f"k must be between 1 and {available}, got {k}")
    dtype = compute_dtype(queries.dtype, points.dtype)
    q = queries.to(dtype)
    q_sq = (q * q).sum(1)
    best = torch.full((q.shape[0], k), math.inf, dtype=dtype, device=q.device)
    best_idx = torch.zeros((q.shape[0], k), dtype=torch.long, device=q.device)
    rows = torch.arange(q.shape[0], device=q.device)
    for start in range(0, points.shape[0], chunk_size):
        chunk = points[start : start + chunk_size].to(device=q.device, dtype=dtype)
        sq = torch.addmm(q_sq[:, None] + (chunk * chunk).sum(1)[None, :], q, chunk.T, alpha=-2.0).clamp_min_(0)
        if exclude_self:
            cols = rows - start
            inside = (cols >= 0) & (cols < chunk.shape[0])
            sq[rows[inside], cols[inside]] = math.inf
        idx = torch.arange(start, start + chunk.shape[0], device=q.device).expand(q.shape[0], -1)
        merged, order = torch.cat([best, sq], 1).topk(k, dim=1, largest=False)
        best, best_idx = merged, torch.cat([best_idx, idx], 1).gather(1, order)
    return best.sqrt(), best_idx


def nearest_distances(queries: Tensor, points: Tensor, *, exclude_self: bool = False, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Distance (B,) from each query to its nearest point; see :func:`nearest_neighbours`."""
    return nearest_neighbours(queries, points, 1, exclude_self=exclude_self, chunk_size=chunk_size)[0][:, 0]
