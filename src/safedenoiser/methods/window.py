"""Where a correction is active: a closed interval of noise levels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

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


#: Window policies by name, as step fractions [start, stop) of a sampling schedule (:meth:`Window.from_step_fractions`).
#: ``paper``: the paper's critical window t in [780, 1000] of 1000 DDPM steps; ``half``: the first (high-noise) half
#: of the steps, where bank substitution acts.
PAPER_WINDOW = (0.0, 0.22)
HALF_WINDOW = (0.0, 0.5)
STEP_FRACTIONS = {"paper": PAPER_WINDOW, "half": HALF_WINDOW}
#: The same policies as training timesteps of a 1000-step VP scheduler (act at t >= this).
TIMESTEPS = {"paper": 780, "half": 500}


def step_windows(sigmas: Tensor) -> dict[str, Window]:
    """Every window policy on the schedule ``sigmas`` (by step fractions)."""
    return {name: Window.from_step_fractions(sigmas, *fractions) for name, fractions in STEP_FRACTIONS.items()}


def timestep_windows(sigma_at_timestep: Callable[[int], float]) -> dict[str, Window]:
    """Every window policy on a VP scheduler: active from the VE noise level of its policy's timestep up."""
    return {name: Window(sigma_at_timestep(t)) for name, t in TIMESTEPS.items()}
