"""Rejection sampling with a judge: the safety upper bound, paid for in denoiser evaluations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor


@dataclass
class RejectionResult:
    samples: Tensor  # (n, ...) accepted samples, in the order of their seeds
    seeds: list[int]  # the seed of every accepted sample
    attempts: int  # samples drawn in total (accepted + rejected)
    exhausted: bool  # True when max_attempts ran out before n samples were accepted


def rejection_sample(draw: Callable[[Sequence[int]], Tensor], is_unsafe: Callable[[Tensor], Tensor], n: int, *,
                     first_seed: int = 0, batch_size: int = 256, max_attempts: int | None = None) -> RejectionResult:
    """Draw samples seed by seed (``draw(seeds) -> (b, ...)``) and keep those the judge calls safe until ``n``
    are kept or ``max_attempts`` (default 100 n) are spent. Seeds run first_seed, first_seed + 1, ..."""
    max_attempts = 100 * n if max_attempts is None else max_attempts
    kept: list[Tensor] = []
    kept_seeds: list[int] = []
    seed = first_seed
    while len(kept_seeds) < n and seed - first_seed < max_attempts:
        seeds = list(range(seed, min(seed + batch_size, first_seed + max_attempts)))
        seed += len(seeds)
        batch = draw(seeds)
        safe = ~is_unsafe(batch).to(torch.bool).cpu()
        for row, ok in enumerate(safe.tolist()):
            if ok and len(kept_seeds) < n:
                kept.append(batch[row])
                kept_seeds.append(seeds[row])
    samples = torch.stack(kept) if kept else torch.empty(0)
    return RejectionResult(samples, kept_seeds, seed - first_seed, len(kept_seeds) < n)
