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

from . import cpu_kernel

Distance = Literal["squared", "euclidean"]
Backend = Literal["auto", "torch", "fused"]
DEFAULT_CHUNK = 4096
CPU_CHUNK_BYTES = 2 << 20
FUSED_MIN_WORK = 1 << 20  # B x N x D below which "auto" keeps the torch path (its call overhead is lower)
ACCELERATOR_CHUNK_BYTES = 64 << 20


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


def min_bandwidth(dtype: torch.dtype) -> float:
    """Smallest noise level / bandwidth accepted in ``dtype``: tiny^(1/4) (3.3e-10 in float32, 1.2e-77 in float64),
    so that 1 / sigma^2 <= 1 / sqrt(tiny) and the kernel logits stay far from overflow (below it they become
    inf - inf = NaN)."""
    return torch.finfo(dtype).tiny ** 0.25


def batch_sigma(sigma: Tensor | float, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Broadcast a scalar or (B,) noise level to a (B,) tensor; finite and >= :func:`min_bandwidth` is checked for
    Python numbers and CPU tensors (a check on an accelerator would synchronise the sampling loop)."""
    if isinstance(sigma, Tensor) and (sigma.is_complex() or sigma.dtype == torch.bool):
        raise ValueError(f"noise level / bandwidth must be real, got dtype {sigma.dtype}")
    try:
        sigma = torch.as_tensor(sigma, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"noise level / bandwidth must be a number or a tensor, got {type(sigma).__name__}") from err
    if sigma.device.type == "cpu" and not bool(((sigma > 0) & torch.isfinite(sigma)).all()):
        raise ValueError(f"noise level / bandwidth must be positive and finite, got {sigma.tolist()[:4]}")
    if sigma.device.type == "cpu" and sigma.numel() and not bool((sigma >= min_bandwidth(dtype)).all()):
        raise ValueError(f"noise level / bandwidth {sigma.min().item():.3g} is below {min_bandwidth(dtype):.3g}, the smallest "
                         f"that {dtype} kernels represent (1/sigma^2 would overflow)")
    sigma = sigma.to(device)
    if sigma.numel() == 1:
        sigma = sigma.expand(batch)
    if sigma.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape ({batch},), got {tuple(sigma.shape)}")
    return sigma


def chunk_sq_distances(queries: Tensor, query_sq: Tensor, chunk: Tensor, chunk_sq: Tensor | None = None) -> Tensor:
    """|q_b - x_n|^2 (B, C) = |q_b|^2 + |x_n|^2 - 2 q_b . x_n for queries (B, D) and a chunk of points (C, D),
    clamped at 0 (the expansion can round slightly below)."""
    chunk_sq = (chunk * chunk).sum(1) if chunk_sq is None else chunk_sq
    return torch.addmm(query_sq[:, None] + chunk_sq[None, :], queries, chunk.T, alpha=-2.0).clamp_min_(0)


def auto_chunk_size(dim: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> int:
    """Rows per chunk: about 2 MiB of points in the compute dtype on a CPU (each chunk is read twice, for the
    logits and for the weighted sum, and the second read should come from cache), 64 MiB on an accelerator
    (fewer kernel launches)."""
    target = CPU_CHUNK_BYTES if torch.device(device).type == "cpu" else ACCELERATOR_CHUNK_BYTES
    itemsize = torch.finfo(dtype).bits // 8
    return int(max(64, min(65536, target // max(1, dim * itemsize))))


def squared_norms(points: Tensor, dtype: torch.dtype | None = None, chunk_size: int | None = None) -> Tensor:
    """|x_n|^2 for (N, D) points, accumulated in ``dtype`` (default: :func:`compute_dtype`), one pass over chunks."""
    dtype = dtype or compute_dtype(points.dtype)
    chunk_size = chunk_size or auto_chunk_size(points.shape[1], dtype, points.device)
    out = torch.empty(points.shape[0], dtype=dtype, device=points.device)
    for start in range(0, points.shape[0], chunk_size):
        chunk = points[start : start + chunk_size].to(dtype)
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
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    backend: Backend = "auto",
    threads: int | None = None,
) -> KernelMoments:
    """Stream the kernel moments of ``points`` (N, D) at queries ``x`` (B, D) in one pass over the points.

    ``bandwidth`` is sigma (squared distance) or s (plain distance), scalar or (B,).
    ``point_sq_norms`` (N,) may be cached by the caller (see :class:`~safedenoiser.NegationSet`).
    ``points`` may be stored in float16 / bfloat16 / float32 / float64, on the queries' device or not (a
    memory-mapped CPU tensor streamed to an accelerator, say); each chunk is copied into one reused buffer
    in the accumulation ``dtype`` (default :func:`compute_dtype` of the inputs: float32, or float64 if any
    input is float64). ``chunk_size`` rows per step (default :func:`auto_chunk_size`). Extra memory:
    O(B x D + chunk x D + B x chunk), whatever N.

    ``backend``: ``"fused"`` is the one-pass compiled CPU loop of :mod:`safedenoiser.cpu_kernel` (float32
    accumulation, CPU queries and points, ``threads`` shards, default ``torch.get_num_threads()``);
    ``"torch"`` the chunked torch formulation (any device, float64); ``"auto"`` picks the fused loop whenever
    it applies, numba is installed and B x N x D >= ``FUSED_MIN_WORK`` (below, both take well under a millisecond
    and the torch path has the lower call overhead).
    """
    dtype = _accumulation_dtype(x, points, distance, dtype)
    batch, dim = x.shape
    chunk_size = chunk_size or auto_chunk_size(dim, dtype, x.device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if backend not in ("auto", "torch", "fused"):
        raise ValueError(f"unknown kernel backend {backend!r}; expected 'auto', 'torch' or 'fused'")
    xs = x.to(dtype)
    band = batch_sigma(bandwidth, batch, dtype, x.device)
    inv_band_sq = 1.0 / (band * band)  # (B,)
    squared = distance == "squared"
    x_sq = (xs * xs).sum(1)  # (B,)
    if _takes_fused(backend, xs, points):
        if point_sq_norms is None:
            point_sq_norms = squared_norms(points, dtype, chunk_size)
        return _fused_moments(xs, x_sq, points, point_sq_norms, inv_band_sq, squared, with_mean, chunk_size, threads)
    return _streamed_moments(xs, x_sq, points, point_sq_norms, inv_band_sq, squared, with_mean, chunk_size)


def _accumulation_dtype(x: Tensor, points: Tensor, distance: str, dtype: torch.dtype | None) -> torch.dtype:
    """Check the inputs of :func:`kernel_moments`; the dtype it accumulates in (given, or :func:`compute_dtype`)."""
    if x.ndim != 2 or points.ndim != 2 or x.shape[1] != points.shape[1]:
        raise ValueError(f"kernel_moments needs x (B, D) and points (N, D); got {tuple(x.shape)} and {tuple(points.shape)}")
    if points.shape[0] == 0:
        raise ValueError("kernel_moments needs at least one point")
    if distance not in ("squared", "euclidean"):
        raise ValueError(f"unknown distance {distance!r}; expected 'squared' or 'euclidean'")
    if dtype is None:
        dtype = compute_dtype(x.dtype, points.dtype)
    elif dtype not in (torch.float32, torch.float64):
        raise ValueError(f"kernel accumulation dtype must be torch.float32 or torch.float64, got {dtype}")
    if not points.is_floating_point():
        raise ValueError(f"points must be floating point, got {points.dtype}")
    return dtype


def _takes_fused(backend: str, xs: Tensor, points: Tensor) -> bool:
    """Whether ``backend`` sends queries ``xs`` (already in the accumulation dtype) to the fused CPU loop; "fused"
    where it does not apply is an error."""
    device = xs.device
    fused_applies = cpu_kernel.available() and xs.dtype == torch.float32 and device.type == "cpu" and points.device.type == "cpu"
    if backend == "fused" and not fused_applies:
        raise ValueError("the fused kernel needs numba, float32 accumulation and CPU queries and points; "
                         f"got dtype {xs.dtype}, devices {device} / {points.device}, numba {'yes' if cpu_kernel.available() else 'missing'}")
    work = xs.shape[0] * points.shape[0] * xs.shape[1]
    return backend == "fused" or (backend == "auto" and fused_applies and work >= FUSED_MIN_WORK)


def _fused_moments(xs: Tensor, x_sq: Tensor, points: Tensor, point_sq_norms: Tensor, inv_band_sq: Tensor, squared: bool,
                   with_mean: bool, chunk_size: int, threads: int | None) -> KernelMoments:
    """The fused one-pass loop of :mod:`safedenoiser.cpu_kernel` in shards, merged, with the row constant
    -|x|^2 / (2 sigma^2) added for squared distances; returned in the dtype of ``xs``."""
    dtype = xs.dtype
    shards = cpu_kernel.fused_shards(xs, x_sq, points, point_sq_norms, inv_band_sq, euclidean=not squared,
                                     with_mean=with_mean, chunk_size=chunk_size, threads=threads or torch.get_num_threads())
    parts = [KernelMoments(log_mass=torch.from_numpy(log_mass), max_logit=torch.from_numpy(max_logit),
                           mean=None if mean is None else torch.from_numpy(mean)) for log_mass, mean, max_logit in shards]
    moments = parts[0] if len(parts) == 1 else combine_moments(parts)
    shift = -0.5 * (x_sq * inv_band_sq).double() if squared else 0.0  # the row constant
    return KernelMoments(log_mass=(moments.log_mass + shift).to(dtype), max_logit=(moments.max_logit + shift).to(dtype),
                         mean=None if moments.mean is None else moments.mean.to(dtype))


def _streamed_moments(xs: Tensor, x_sq: Tensor, points: Tensor, point_sq_norms: Tensor | None, inv_band_sq: Tensor,
                      squared: bool, with_mean: bool, chunk_size: int) -> KernelMoments:
    """The chunked torch loop: an online log-sum-exp over chunks of ``points`` (flash-attention recurrence), each
    chunk copied into one reused buffer in the dtype and on the device of ``xs`` where it is stored otherwise."""
    (batch, dim), count, dtype, device = xs.shape, points.shape[0], xs.dtype, xs.device
    buffer = None
    if points.dtype != dtype or points.device != device:
        buffer = torch.empty(min(chunk_size, count), dim, dtype=dtype, device=device)
    run_max = torch.full((batch,), -math.inf, dtype=dtype, device=device)
    run_sum = torch.zeros(batch, dtype=dtype, device=device)
    acc = torch.zeros(batch, dim, dtype=dtype, device=device) if with_mean else None
    for start in range(0, count, chunk_size):
        block = points[start : start + chunk_size]
        chunk = block if buffer is None else buffer[: block.shape[0]].copy_(block, non_blocking=True)  # (C, D)
        if point_sq_norms is None:
            chunk_sq = (chunk * chunk).sum(1)
        else:
            chunk_sq = point_sq_norms[start : start + chunk.shape[0]].to(device=device, dtype=dtype)
        if squared:
            # l_n + |x|^2 / (2 sigma^2) = (x . x_n - |x_n|^2 / 2) / sigma^2: the row constant is added at the end
            logits = torch.addmm(chunk_sq[None, :], xs, chunk.T, beta=-0.5).mul_(inv_band_sq[:, None])
        else:
            logits = chunk_sq_distances(xs, x_sq, chunk, chunk_sq).sqrt_().mul_(-0.5 * inv_band_sq[:, None])
        new_max = torch.maximum(run_max, logits.amax(1))
        rescale = (run_max - new_max).exp_()  # (B,), 0 on the first chunk
        weights = logits.sub_(new_max[:, None]).exp_()  # (B, C), in (0, 1]
        run_sum = run_sum.mul_(rescale).add_(weights.sum(1))
        if acc is not None:
            acc.mul_(rescale[:, None]).addmm_(weights, chunk)
        run_max = new_max
    if squared:
        run_max = run_max - 0.5 * x_sq * inv_band_sq
    mean = acc / run_sum[:, None] if acc is not None else None
    return KernelMoments(log_mass=run_max + torch.log(run_sum), mean=mean, max_logit=run_max)


def combine_moments(parts: list[KernelMoments]) -> KernelMoments:
    """Moments of the union of disjoint point sets from the moments of each (shards, files, devices):
    log_mass = logsumexp_i log_mass_i, mean = sum_i exp(log_mass_i - log_mass) mean_i."""
    if not parts:
        raise ValueError("combine_moments needs at least one part")
    log_mass = torch.logsumexp(torch.stack([p.log_mass for p in parts]), 0)
    max_logit = torch.stack([p.max_logit for p in parts]).amax(0)
    mean = None
    if all(p.mean is not None for p in parts):
        mean = sum(torch.exp(p.log_mass - log_mass)[:, None] * p.mean for p in parts)
    return KernelMoments(log_mass=log_mass, mean=mean, max_logit=max_logit)


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
        sq = chunk_sq_distances(q, q_sq, chunk)
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
