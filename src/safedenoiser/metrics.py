"""Sample-quality metrics for benchmarks: kernel MMD (with a permutation test) and unsafe fractions."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def median_bandwidths(reference: Tensor, factors: Sequence[float] = (0.5, 1.0, 2.0), max_points: int = 2000) -> list[float]:
    """RBF bandwidths: the median pairwise distance of ``reference`` (N, D) times ``factors``."""
    ref = reference.reshape(reference.shape[0], -1)[:max_points].double()
    dist = torch.cdist(ref, ref)
    median = float(dist[torch.triu(torch.ones_like(dist, dtype=torch.bool), 1)].median())
    return [median * f for f in factors]


def _gram(a: Tensor, b: Tensor, bandwidths: Sequence[float]) -> Tensor:
    sq = torch.cdist(a, b).pow(2)
    return sum(torch.exp(-sq / (2 * h * h)) for h in bandwidths)


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float]) -> float:
    """Biased (V-statistic) MMD with a sum of RBF kernels: sqrt(mean k(x,x') + mean k(y,y') - 2 mean k(x,y)).

    The biased form is always >= 0 and has a noise floor of order 1/sqrt(n), so ratios between methods are
    meaningful; compare against :func:`mmd` of two independent reference samples of the same size.
    """
    a = x.reshape(x.shape[0], -1).double()
    b = y.reshape(y.shape[0], -1).double()
    value = _gram(a, a, bandwidths).mean() + _gram(b, b, bandwidths).mean() - 2 * _gram(a, b, bandwidths).mean()
    return float(value.clamp_min(0).sqrt())


def mmd_permutation_pvalue(x: Tensor, y: Tensor, bandwidths: Sequence[float], permutations: int = 200, seed: int = 0) -> float:
    """p-value of the two-sample test 'x and y come from the same distribution' with the MMD statistic."""
    a = x.reshape(x.shape[0], -1).double()
    b = y.reshape(y.shape[0], -1).double()
    pooled = torch.cat([a, b])
    gram = _gram(pooled, pooled, bandwidths)
    n = a.shape[0]

    def statistic(idx: Tensor) -> Tensor:
        g = gram[idx][:, idx]
        return g[:n, :n].mean() + g[n:, n:].mean() - 2 * g[:n, n:].mean()

    observed = statistic(torch.arange(pooled.shape[0]))
    gen = torch.Generator().manual_seed(seed)
    exceed = sum(bool(statistic(torch.randperm(pooled.shape[0], generator=gen)) >= observed) for _ in range(permutations))
    return (exceed + 1) / (permutations + 1)


def unsafe_fraction(labels: Tensor, unsafe: Sequence[int]) -> float:
    """Share of ``labels`` (B,) that fall in the ``unsafe`` label set."""
    if labels.numel() == 0:
        raise ValueError("unsafe_fraction of an empty sample")
    return float(torch.isin(labels, torch.as_tensor(list(unsafe), device=labels.device)).double().mean())
