"""Per-sample seeded noise: every sample is reproducible from its own seed, whatever the batch."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class SeededNoise:
    """One CPU generator per sample; ``draw()`` returns (B, *item_shape) standard normal noise.

    The first draw is the initial noise, later draws feed stochastic samplers, so sample ``i`` depends
    only on ``seeds[i]``.
    """

    def __init__(self, seeds: Sequence[int], item_shape: Sequence[int], dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.item_shape = tuple(item_shape)
        self.dtype = dtype
        self.device = torch.device(device)

    def draw(self) -> Tensor:
        rows = [torch.randn(self.item_shape, generator=g, dtype=self.dtype) for g in self.generators]
        return torch.stack(rows).to(self.device)

    def __call__(self, sigma: Tensor | None = None, sigma_next: Tensor | None = None) -> Tensor:
        """The next draw, as a k-diffusion ``noise_sampler(sigma, sigma_next)`` (the noise levels are not used)."""
        return self.draw()


def initial_noise(seeds: Sequence[int], item_shape: Sequence[int], sigma_max: float, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> tuple[Tensor, SeededNoise]:
    """x_T = sigma_max * n with per-seed n, and the noise source to pass on to stochastic samplers."""
    source = SeededNoise(seeds, item_shape, dtype, device)
    return source.draw() * sigma_max, source
