"""Bank substitution: a bounded form of the calibrated safe denoiser (proposed here; not in the paper).

With r(x) = beta*(x) / (1 + beta*(x)) the posterior probability that x came from the unsafe part,
E_data = (1 - r) E_safe + r E_unsafe (paper Eq. 5 rearranged). The calibrated mode solves for E_safe,
E_safe = E_data + beta* (E_data - E_unsafe), which extrapolates by beta* -> infinity where the sample
is committed to unsafe content and the difference E_data - E_unsafe is small and noisy. Substituting
a kernel estimate E_bank of E_safe from the model's own safe samples for the unsafe part only gives

    E_safe ~= E_data + r(x) (E_bank(x) - E_unsafe(x)),     r = g beta* / (1 + g beta*)

which is exact when E_bank = E_safe, never extrapolates (r <= 1), and reduces to the model's own
output where r ~ 0. E_unsafe and E_bank are softmax-weighted means of the negation set and of the
calibration's safe bank under the noising kernel N(x; y, sigma^2 I); beta* is the calibration's
estimate (safedenoiser.methods.calibration), g a gain.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..kernels import kernel_moments
from ..methods import Calibration, Correction, Proposal
from ..negation import NegationSet


class BankSubstitution(Correction):
    """x0' = x0 + r (E_bank - E_unsafe), r = sigmoid(log g + log beta*); active where log beta* > log_threshold."""

    def __init__(self, negation: NegationSet, calibration: Calibration, *, gain: float = 1.0,
                 log_threshold: float = -math.inf, **kwargs: Any):
        super().__init__(negation, **kwargs)
        if not isinstance(calibration, Calibration):
            raise TypeError("bank substitution needs a Calibration (see Calibration.from_bank)")
        if calibration.dim != negation.dim:
            raise ValueError(f"calibration bank has dimension {calibration.dim} but the negation set has {negation.dim}")
        if not gain > 0 or not math.isfinite(gain):
            raise ValueError(f"gain must be a finite number > 0, got {gain}")
        self.calibration, self.gain, self.log_threshold = calibration, gain, log_threshold

    @property
    def is_identity(self) -> bool:
        return self.calibration.unsafe_share == 0 or super().is_identity

    def propose(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Proposal:
        cal = self.calibration
        unsafe = self.negation.moments(x, sigma, chunk_size=self.chunk_size)
        safe = kernel_moments(x, cal.safe_bank.to(x.device), sigma, point_sq_norms=cal.safe_sq_norms.to(x.device),
                              chunk_size=self.chunk_size)
        log_odds = math.log(cal.unsafe_share) - math.log1p(-cal.unsafe_share)
        log_beta = (log_odds + unsafe.log_mass - math.log(len(self.negation))
                    - safe.log_mass + math.log(cal.safe_bank.shape[0]))
        r = torch.sigmoid(log_beta + math.log(self.gain))
        return Proposal(x0 + r[:, None] * (safe.mean.to(x0.dtype) - unsafe.mean.to(x0.dtype)), log_beta > self.log_threshold,
                        {"weight": r, "log_beta": log_beta, "log_kernel_mass": unsafe.log_mass})
