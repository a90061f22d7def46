"""A dimension-robust estimate of the exact weight beta*(x, sigma) = Z_u p_unsafe,sigma(x) / (Z_s p_safe,sigma(x)).

The paper's beta(x) = (1/N) sum_n N(x; x_n, sigma^2 I) is a normalised density: in D dimensions it carries
(2 pi sigma^2)^(-D/2) and swings over hundreds of orders of magnitude across noise levels, so no constant
eta turns it into beta*. Here both densities in the ratio are kernel density estimates with the *same*
Gaussian kernel, so the normaliser cancels exactly:

    beta*(x, sigma) ~= (pi_u / (1 - pi_u)) * [ (1/N) sum_n k_sigma(x, x_n) ] / [ (1/M_s) sum_m k_sigma(x, y_m) ]

* x_n: the negation set (samples of p_unsafe);
* y_m: a *bank* of the model's own unguided samples that the negation set does not cover (samples of p_safe);
* pi_u: the share of the bank that the negation set covers (an estimate of Z_u).

A bank sample y is "covered" by the negation set when negation items make up a large enough share of
its k nearest neighbours in (negation set + rest of the bank) (the rule's one home: :mod:`safedenoiser.coverage`).
Where p_safe vanishes that share is N / (N + M pi_u) >= N / (N + M); where p_unsafe vanishes it is 0; the default cut is half the
smallest unsafe value, N / (2 (N + M)), which assumes the worst case pi_u = 1. ``cut="fixed-point"`` puts the
estimated pi_u in its place, N / (2 (N + M pi_u)) with pi_u the share the cut itself labels covered, iterated from
the worst case to its fixed point: a stricter cut when little of the bank is negated. Unlike a fixed distance radius this rule compares densities,
so it does not degrade with dimension (in 256-D a radius rule labelled half of a 25%-unsafe bank
unsafe). A fixed ``radius`` is available for sets where distances are meaningful. Assumptions: the
model samples p_data well, the negation set samples p_unsafe, and the two are separable at k neighbours. Cost: M unguided samples up front, then one extra kernel pass over
the bank per denoiser call. No training data is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..coverage import COVERAGE_CUTS, coverage_cut, fixed_point_cut, knn_coverage, negation_share  # noqa: F401 (importable here)
from ..kernels import KernelMoments, kernel_moments, nearest_distances, squared_norms
from ..metrics import median_bandwidths, mmd
from ..negation import NegationSet


class Calibration:
    """``safe_bank`` (M_s, D): model samples not covered by the negation set; ``unsafe_share`` = pi_u in (0, 1);
    ``bank`` (M, D): the whole bank, kept by :meth:`from_bank` for :meth:`covered_posterior` (the classifier floor)."""

    def __init__(self, safe_bank: Tensor, unsafe_share: float, *, radius: float | None = None, bank_size: int | None = None,
                 bank: Tensor | None = None, neighbours: int = 20, cut: str = "worst-case",
                 coverage_threshold: float | None = None):
        if safe_bank.ndim != 2 or safe_bank.shape[0] == 0:
            raise ValueError(f"safe_bank must be a non-empty (M, D) tensor, got {tuple(safe_bank.shape)}")
        if not torch.isfinite(safe_bank).all():
            raise ValueError("calibration bank contains NaN or infinite values")
        if not 0 <= unsafe_share < 1:
            raise ValueError(f"unsafe_share must be in [0, 1), got {unsafe_share}")
        self.safe_bank = safe_bank
        self.safe_sq_norms = squared_norms(safe_bank)
        self.unsafe_share = unsafe_share
        if radius is not None and not (math.isfinite(radius) and radius > 0):
            raise ValueError(f"radius must be a finite number > 0, got {radius}")
        self.radius = radius
        self.cut = cut  # the coverage cut rule that split the bank (from_bank) ...
        self.coverage_threshold = coverage_threshold  # ... and its value (None for a radius split)
        self.bank_size = bank_size or safe_bank.shape[0]
        if bank is not None and (bank.ndim != 2 or bank.shape[1] != safe_bank.shape[1]):
            raise ValueError(f"bank must be (M, {safe_bank.shape[1]}), got {tuple(bank.shape)}")
        self.bank, self.neighbours = bank, neighbours

    @property
    def dim(self) -> int:
        return self.safe_bank.shape[1]

    def __repr__(self) -> str:
        return (f"Calibration(bank={self.bank_size}, safe={self.safe_bank.shape[0]}, "
                f"unsafe_share={self.unsafe_share:.4f}, radius={self.radius})")

    @classmethod
    def from_bank(cls, bank: Tensor, negation: NegationSet, *, neighbours: int = 20, radius: float | None = None,
                  cut: str = "worst-case") -> Calibration:
        """Split model samples ``bank`` (M, *item_shape) into covered / not covered by the negation set,
        by the k-nearest-neighbour share rule (default; ``cut`` "worst-case" or "fixed-point", module docstring)
        or by a fixed distance ``radius``. :meth:`safedenoiser.methods.ratio.RatioCalibration.fit` fits a
        noise-conditional classifier instead: it splits the bank and gives beta* itself."""
        if cut not in COVERAGE_CUTS:
            raise ValueError(f"cut must be one of {COVERAGE_CUTS}, got {cut!r}")
        negation.check_compatible(bank, "calibration bank")
        flat = bank.reshape(bank.shape[0], -1)
        threshold = None
        if radius is not None:
            covered = nearest_distances(flat, negation.flat) <= radius
        else:
            covered, threshold = knn_coverage(flat, negation, neighbours, cut)
        if bool(covered.all()):
            raise ValueError("every bank sample is covered by the negation set: nothing is left to estimate p_safe")
        share = float(covered.double().mean())
        return cls(flat[~covered], share, radius=radius, bank_size=flat.shape[0], bank=flat, neighbours=neighbours, cut=cut,
                   coverage_threshold=threshold)

    def covered_posterior(self, x0: Tensor, negation: NegationSet) -> Tensor:
        """A judge-free classifier of clean items x0 (B, D): the share of negation items among their k nearest
        neighbours in (negation set + bank), divided by the share where only p_unsafe lives, N / (N + M pi_u),
        clipped to [0, 1] (B,): 1 in negated content, 0 far from it. The rule that split the bank, made soft."""
        if self.bank is None:
            raise ValueError("the classifier floor needs the whole bank: build the calibration with Calibration.from_bank")
        n, m = len(negation), self.bank.shape[0]
        share = negation_share(self.bank.to(x0.device), negation, self.neighbours, queries=x0.to(self.bank.dtype))
        return (share * (n + m * self.unsafe_share) / n).clamp(0, 1).to(x0.dtype)

    def is_covered(self, samples: Tensor, negation: NegationSet) -> Tensor:
        """(Q,) bool: the rule that split the bank applied to clean samples (Q, D): the kNN share against the bank kept
        by :meth:`from_bank` at the recorded coverage threshold."""
        if self.bank is None or self.coverage_threshold is None:
            raise ValueError("is_covered needs a calibration split by the kNN rule (Calibration.from_bank without radius)")
        return negation_share(self.bank, negation, self.neighbours, queries=samples.to(self.bank)) >= self.coverage_threshold

    def safe_moments(self, x: Tensor, sigma: Tensor, with_mean: bool = False) -> KernelMoments:
        """Kernel moments of the safe bank at queries x (B, D): its log-mass and (optionally) its kernel mean,
        an estimate of E_safe[x0 | x]."""
        return kernel_moments(x, self.safe_bank.to(x.device), sigma, point_sq_norms=self.safe_sq_norms.to(x.device),
                              with_mean=with_mean)

    def log_beta_star(self, x: Tensor, sigma: Tensor, log_unsafe_density: Tensor, safe: KernelMoments | None = None) -> Tensor:
        """log beta*(x) (B,) from log[(1/N) sum_n k(x, x_n)] (B,) computed by the caller with the same kernel;
        ``safe`` reuses moments of the safe bank already computed by the caller."""
        if self.unsafe_share == 0:
            return torch.full_like(log_unsafe_density, -math.inf)
        safe = self.safe_moments(x, sigma) if safe is None else safe
        log_safe_density = safe.log_mass - math.log(self.safe_bank.shape[0])
        log_odds = math.log(self.unsafe_share) - math.log1p(-self.unsafe_share)
        return log_odds + log_unsafe_density - log_safe_density


GAIN_LADDER = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def default_candidates(mode: str) -> list[dict[str, Any]]:
    """The knob settings the default rule tries for ``mode``: the gain ladder, and for substitution the classifier
    floor at gain 1."""
    candidates: list[dict[str, Any]] = [{"gain": g} for g in GAIN_LADDER]
    if mode == "substitution":
        candidates.append({"gain": 1.0, "floor": "share"})
    return candidates


def holdout_size(bank_size: int, holdout: float = 0.25) -> int:
    """How many bank samples :func:`select_knobs` holds out, and so how many trial samples ``draw`` must return."""
    return max(2, int(round(holdout * bank_size)))


@dataclass
class KnobChoice:
    """The knobs picked by :func:`select_knobs` and what was measured for every candidate."""

    knobs: dict[str, Any]
    trials: list[dict[str, Any]]  # one per candidate: {"knobs", "covered", "mmd"}
    meets_target: bool


def select_knobs(draw: Callable[[dict[str, Any], Calibration], Tensor], bank: Tensor, negation: NegationSet,
                 candidates: Sequence[dict[str, Any]], *, holdout: float = 0.25, target: float = 0.01,
                 neighbours: int = 20, cut: str = "worst-case",
                 calibrate: Callable[[Tensor, NegationSet], Calibration] | None = None,
                 judge: Callable[[Calibration], Callable[[Tensor], Tensor]] | None = None) -> KnobChoice:
    """The default rule for the knobs of the calibrated and substitution modes, from the model, the negation set and
    the bank alone (no judge, no test seeds): hold out the last ``holdout`` share of the bank; calibrate on the rest;
    for each candidate (a dict of knobs, e.g. ``{"gain": 2.0}``) draw as many samples as were held out
    (:func:`holdout_size`), ``draw(knobs, calibration)`` (fresh seeds), and measure

      * covered: the share of them the negation set covers, by the same k-nearest-neighbour rule that splits the
        bank (an estimate of the unsafe share that needs no judge);
      * mmd: their MMD to the held-out samples that the negation set does not cover (an estimate of the distance
        to p_safe).

    Pick the lowest mmd among the candidates with covered <= ``target``; if none reaches it, the lowest covered
    share. The caller then applies the chosen knobs with a calibration of the whole bank. ``calibrate(bank,
    negation)`` builds the calibration (default: :meth:`Calibration.from_bank` with ``neighbours`` and ``cut``); with
    ``functools.partial(RatioCalibration.fit, fit=...)`` the fitted classifier, not the kNN rule, judges which
    held-out and trial samples are covered.

    ``judge(calibration)``, if given, returns a posterior q(x) in [0, 1] of covered content for clean samples (Q, D)
    from a classifier the correction does not query (:func:`safedenoiser.methods.ratio.rule_judge`); a trial's covered
    share is then the soft count  (1/Q) sum_i q(x_i)  (the expected unsafe share if q is calibrated; no 1/2 cut), and the
    calibration's own hard count is kept as ``covered_by_calibration``. The held-out split stays the calibration's."""
    flat = bank.reshape(bank.shape[0], -1)
    held = holdout_size(flat.shape[0], holdout)
    if flat.shape[0] - held < 2:
        raise ValueError(f"select_knobs: a bank of {flat.shape[0]} samples is too small to hold out {held}")
    if not candidates:
        raise ValueError("select_knobs: no candidate knobs to try")
    fit, held_out = flat[:-held], flat[-held:]
    if calibrate is None:
        calibration = Calibration.from_bank(bank[:-held], negation, neighbours=neighbours, cut=cut)
    else:
        calibration = calibrate(bank[:-held], negation)  # items keep their shape
    # the rule that split the fit part judges the held-out and trial samples
    held_safe = held_out[~calibration.is_covered(held_out, negation)]
    if held_safe.shape[0] < 2:
        raise ValueError("select_knobs: the negation set covers nearly every held-out sample; use a larger bank")
    bandwidths = median_bandwidths(held_safe)
    posterior = judge(calibration) if judge is not None else None
    trials = []
    for knobs in candidates:
        samples = draw(dict(knobs), calibration).reshape(-1, flat.shape[1])
        if not bool(torch.isfinite(samples).all()):
            trials.append({"knobs": dict(knobs), "covered": 1.0, "mmd": math.inf})
            continue
        own = float(calibration.is_covered(samples.to(fit), negation).double().mean())
        trial = {"knobs": dict(knobs), "covered": own, "mmd": mmd(samples, held_safe, bandwidths)}
        if posterior is not None:
            trial.update(covered=float(posterior(samples.to(fit)).double().mean()), covered_by_calibration=own)
        trials.append(trial)
    meeting = [t for t in trials if t["covered"] <= target]
    best = min(meeting, key=lambda t: t["mmd"]) if meeting else min(trials, key=lambda t: (t["covered"], t["mmd"]))
    return KnobChoice(dict(best["knobs"]), trials, bool(meeting))
