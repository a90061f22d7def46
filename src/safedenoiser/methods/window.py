"""Where a correction is active: a closed interval of noise levels."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Window:
    """Active for ``sigma_min <= sigma <= sigma_max`` (VE noise levels). The default is always active."""

    sigma_min: float = 0.0
    sigma_max: float = math.inf

    def __post_init__(self) -> None:
        if math.isnan(self.sigma_min) or math.isnan(self.sigma_max) or self.sigma_min < 0:
            raise ValueError(f"window bounds must be non-negative numbers, got [{self.sigma_min}, {self.sigma_max}]")

    @property
    def empty(self) -> bool:
        return self.sigma_min > self.sigma_max

    def contains(self, sigma: Tensor) -> Tensor:
        """(B,) bool."""
        return (sigma >= self.sigma_min) & (sigma <= self.sigma_max)

    @classmethod
    def never(cls) -> Window:
        return cls(1.0, 0.0)

    @classmethod
    def from_step_fractions(cls, sigmas: Tensor, start: float, stop: float) -> Window:
        """The window covering steps i (of the schedule's n = len(sigmas) - 1 steps) with start <= i/n < stop.

        ``start = 0, stop = 0.2`` is the first (highest-noise) fifth of sampling, as in the paper's
        critical window t in [780, 1000] of 1000 DDPM steps.
        """
        if not 0 <= start <= stop <= 1:
            raise ValueError(f"step fractions must satisfy 0 <= start <= stop <= 1, got {start}, {stop}")
        steps = len(sigmas) - 1
        chosen = [i for i in range(steps) if start <= i / steps < stop]
        if not chosen:
            return cls.never()
        return cls(float(sigmas[chosen[-1]]), float(sigmas[chosen[0]]))
