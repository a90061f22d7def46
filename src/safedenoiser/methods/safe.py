"""The safe denoiser (Kim, Kim, Yusuf, Ermon, Park, arXiv 2502.08011) as corrections of the predicted x0.

Identity (paper Eq. 5-6)::

    E_safe[x0|x] = E_data[x0|x] + beta*(x) (E_data[x0|x] - E_unsafe[x0|x]),
    beta*(x) = Z_u p_unsafe,sigma(x) / (Z_s p_safe,sigma(x)).

E_unsafe is the kernel (softmax-attention) mean of the negation set; the three modes differ in the weight:

* ``paper``       w = eta * beta(x),  beta(x) = (1/N) sum_n N(x; x_n, sigma^2 I)       (Eq. 7), gated by beta_t
* ``calibrated``  w = gain * beta*(x) estimated with kernel densities of one bandwidth (see calibration.py)
* ``substitution`` x0 + r (E_bank - E_unsafe), r = g beta* / (1 + g beta*): the calibrated weight without extrapolation
* ``reference``   the authors' public code: kernel on x0, plain distance, x0 - scale * E_unsafe, beta as a gate
* ``conditional`` condition-aware substitution at the (guided) predicted x0 with one shared reference set (conditional.py)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..kernels import KernelMoments, gaussian_log_normaliser
from ..negation import NegationSet
from .base import Correction, Proposal
from .calibration import Calibration

def safe_update(x0: Tensor, unsafe_mean: Tensor, weight: Tensor) -> Tensor:
    """x0 + w (x0 - E_unsafe) for x0, E_unsafe (B, D) and w (B,)."""
    return x0 + weight[:, None] * (x0 - unsafe_mean)


def kernel_diagnostics(weight: Tensor, log_beta: Tensor, moments: KernelMoments) -> dict[str, Tensor]:
    """Per-sample diagnostics of a kernel-weighted correction (B,): the weight, log beta, log sum_n k_n and the
    largest normalised kernel weight (1 = one negation item dominates)."""
    return {"weight": weight, "log_beta": log_beta, "log_kernel_mass": moments.log_mass,
            "max_kernel_weight": torch.exp(moments.max_logit - moments.log_mass)}


def _clipped_weight(log_weight: Tensor, max_weight: float) -> Tensor:
    """exp(min(log w, log max_weight)): finite even when the estimated log-weight is huge."""
    return torch.exp(log_weight.clamp(max=math.log(max_weight)))


class PaperCorrection(Correction):
    """Paper Eq. 7: w = eta * beta(x), beta = (1/N) sum_n N(x; x_n, sigma^2 I) (normalised Gaussian, VE space),
    active where log beta > ``log_threshold`` (log of the paper's beta_t) inside the window.

    The weight is clipped at ``max_weight`` so that it stays finite: unclipped, beta overflows float64
    in high dimension at small sigma.
    """

    KNOBS = ("eta", "log_threshold", "max_weight")

    def __init__(self, negation: NegationSet, *, eta: float = 1.0, log_threshold: float = -math.inf,
                 max_weight: float = 1e6, **kwargs: Any):
        super().__init__(negation, **kwargs)
        if not eta >= 0 or not math.isfinite(eta):
            raise ValueError(f"eta must be a finite number >= 0, got {eta}")
        if not max_weight > 0:
            raise ValueError(f"max_weight must be > 0, got {max_weight}")
        self.eta, self.log_threshold, self.max_weight = eta, log_threshold, max_weight

    @property
    def is_identity(self) -> bool:
        return self.eta == 0 or super().is_identity

    def propose(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Proposal:
        moments = self.negation.moments(x, sigma, chunk_size=self.chunk_size)
        log_beta = moments.log_mass - math.log(len(self.negation)) + gaussian_log_normaliser(x.shape[1], sigma)
        weight = _clipped_weight(math.log(self.eta) + log_beta, self.max_weight)
        return Proposal(safe_update(x0, moments.mean, weight), log_beta > self.log_threshold,
                        kernel_diagnostics(weight, log_beta, moments))


class CalibratedCorrection(Correction):
    """w = gain * beta*(x, sigma) with beta* from :class:`Calibration` (kernel densities at one bandwidth, so the
    Gaussian normalisers cancel in any dimension); active where log beta* > ``log_threshold``; w <= max_weight."""

    KNOBS = ("calibration", "gain", "log_threshold", "max_weight")

    def __init__(self, negation: NegationSet, calibration: Calibration, *, gain: float = 1.0,
                 log_threshold: float = -math.inf, max_weight: float = 100.0, **kwargs: Any):
        super().__init__(negation, **kwargs)
        if not isinstance(calibration, Calibration):
            raise ValueError("calibrated mode needs a Calibration (see Calibration.from_bank)")
        if calibration.dim != negation.dim:
            raise ValueError(f"calibration bank has dimension {calibration.dim} but the negation set has {negation.dim}")
        if not gain >= 0 or not math.isfinite(gain):
            raise ValueError(f"gain must be a finite number >= 0, got {gain}")
        if not max_weight > 0:
            raise ValueError(f"max_weight must be > 0, got {max_weight}")
        self.calibration, self.gain, self.log_threshold, self.max_weight = calibration, gain, log_threshold, max_weight

    @property
    def is_identity(self) -> bool:
        return self.gain == 0 or super().is_identity

    def propose(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Proposal:
        moments = self.negation.moments(x, sigma, chunk_size=self.chunk_size)
        log_beta = self.calibration.log_beta_star(x, sigma, moments.log_mass - math.log(len(self.negation)))
        weight = _clipped_weight(math.log(self.gain) + log_beta, self.max_weight)
        return Proposal(safe_update(x0, moments.mean, weight), log_beta > self.log_threshold,
                        kernel_diagnostics(weight, log_beta, moments))


class SubstitutionCorrection(CalibratedCorrection):
    """Bank substitution (this project): with r = beta* / (1 + beta*) the posterior probability of the unsafe part,
    E_data = (1 - r) E_safe + r E_unsafe (paper Eq. 5 rearranged). Instead of solving for E_safe, which multiplies
    the small, noisy E_data - E_unsafe by beta* (unbounded where a sample has committed to unsafe content), replace
    the unsafe part by the kernel mean E_bank of the calibration's safe bank, an estimate of E_safe:

        x0' = x0 + r (E_bank - E_unsafe),   r = g beta* / (1 + g beta*) <= 1.

    Exact when E_bank = E_safe; reduces to the model where r ~ 0. Knobs as the calibrated mode (``gain`` g,
    ``log_threshold`` on log beta*, ``window``); the weight is bounded by 1, so ``max_weight`` is not used.
    ``floor="share"`` raises r to the judge-free classifier of the predicted x0 (:meth:`Calibration.covered_posterior`)
    where that is larger: in high dimension the kernel estimate of beta* collapses at small sigma (it becomes a
    nearest-neighbour vote between two sets of different sizes) while the classifier of x0 does not.
    """

    KNOBS = ("calibration", "gain", "log_threshold", "floor")
    FLOORS = (None, "share")

    def __init__(self, negation: NegationSet, calibration: Calibration, *, floor: str | None = None, **kwargs: Any):
        super().__init__(negation, calibration, **kwargs)
        if floor not in self.FLOORS:
            raise ValueError(f"unknown floor {floor!r}; choose one of {self.FLOORS}")
        if floor is not None and calibration.bank is None:
            raise ValueError("floor='share' needs the whole bank: build the calibration with Calibration.from_bank")
        self.floor = floor

    def propose(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Proposal:
        moments = self.negation.moments(x, sigma, chunk_size=self.chunk_size)
        safe = self.calibration.safe_moments(x, sigma, with_mean=True)
        log_beta = self.calibration.log_beta_star(x, sigma, moments.log_mass - math.log(len(self.negation)), safe)
        r = torch.sigmoid(log_beta + math.log(self.gain))
        gate = log_beta > self.log_threshold
        if self.floor == "share":
            judged = self.calibration.covered_posterior(x0, self.negation).to(r)
            r, gate = torch.maximum(r, judged), gate | (judged >= 0.5)
        return Proposal(x0 + r[:, None] * (safe.mean - moments.mean), gate, kernel_diagnostics(r, log_beta, moments))


class ReferenceCodeCorrection(Correction):
    """What the authors' public code does: with k_n = exp(-|x0 - x_n| / (2 s^2)) on the *predicted* x0 (plain,
    not squared, distance; fixed bandwidth s, default 1), beta_ref = sum_n k_n (a sum, not a mean) gates
    x0 <- x0 - scale * sum_n k_n x_n / sum_n k_n   where   log beta_ref > log_threshold.

    The authors set the threshold to the minimum beta_ref of the negation items noised to the smallest
    timestep (:meth:`threshold_from_negation`). Not reproduced: their per-pixel channel normalisation of
    the VAE latents and the re-noising with fresh noise after the update (the seam returns x0 and the
    sampler continues), and their batch size of one.
    """

    KNOBS = ("bandwidth", "scale", "log_threshold")

    def __init__(self, negation: NegationSet, *, bandwidth: float = 1.0, scale: float = 0.1,
                 log_threshold: float = -math.inf, **kwargs: Any):
        super().__init__(negation, **kwargs)
        if not bandwidth > 0 or not math.isfinite(bandwidth):
            raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth}")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
        self.bandwidth, self.scale, self.log_threshold = bandwidth, scale, log_threshold

    @property
    def is_identity(self) -> bool:
        return self.scale == 0 or super().is_identity

    def log_beta(self, x0: Tensor) -> tuple[Tensor, Any]:
        moments = self.negation.moments(x0, self.bandwidth, distance="euclidean", chunk_size=self.chunk_size)
        return moments.log_mass, moments

    def propose(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Proposal:
        log_beta, moments = self.log_beta(x0)
        return Proposal(x0 - self.scale * moments.mean, log_beta > self.log_threshold,
                        kernel_diagnostics(torch.full_like(log_beta, self.scale), log_beta, moments))

    def threshold_from_negation(self, sigma: float, quantile: float = 0.0, seed: int = 42) -> float:
        """The ``quantile`` (default: the minimum, as the authors) over the negation items noised to ``sigma``
        (the smallest noise level of the schedule) of log beta_ref."""
        gen = torch.Generator().manual_seed(seed)
        flat = self.negation.flat.float()
        noised = flat + sigma * torch.randn(flat.shape, generator=gen).to(flat)
        log_beta, _ = self.log_beta(noised.to(self.negation.device))
        return float(torch.quantile(log_beta.double().cpu(), quantile))
