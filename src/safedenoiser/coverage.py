"""Which items a negation set covers: the one home of the coverage rules.

kNN share rule (:func:`knn_coverage`): an item y of a set of M items (a bank of model samples, a reference set) is
*covered* when negation items make up a large enough share of its k nearest neighbours in (negation set + the other
items) (:func:`negation_share`). Where p_safe vanishes that share is N / (N + M pi_u) >= N / (N + M); where p_unsafe
vanishes it is 0; the worst-case cut is half the smallest unsafe value, N / (2 (N + M)) (pi_u = 1,
:func:`coverage_cut`); the fixed-point cut puts the estimated pi_u in its place, iterated to its fixed point
(:func:`fixed_point_cut`). The rule compares densities, so unlike a distance radius it does not degrade with dimension.
Used by :meth:`~safedenoiser.methods.calibration.Calibration.from_bank` (the bank split), its ``is_covered`` (which
:func:`~safedenoiser.methods.calibration.select_knobs` applies to held-out and trial samples) and
:meth:`~safedenoiser.negation.ReferenceSet.covered_by`.

Classifier rule (:func:`covered_by_log_odds`): covered where a fitted classifier's log p_unsafe / p_data is at least
log(cut) (:mod:`safedenoiser.methods.ratio`, stage 1).

Only the items of a set are read (``.flat`` and ``len``), so this module sits below :mod:`safedenoiser.negation`.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from .kernels import nearest_neighbours

COVERAGE_CUTS = ("worst-case", "fixed-point")


class Items(Protocol):
    """What the rules read from a set (a :class:`~safedenoiser.negation.NegationSet`): its N items as (N, D)."""

    @property
    def flat(self) -> Tensor: ...

    def __len__(self) -> int: ...


def negation_share(bank: Tensor, negation: Items, neighbours: int = 20, *, queries: Tensor | None = None) -> Tensor:
    """The share of negation items among the ``neighbours`` nearest neighbours in the union of the negation set
    and the bank (M, D): for each bank sample (itself excluded), or for each row of ``queries`` (Q, D) if given."""
    outside = queries is None
    queries = bank if outside else queries
    k = min(neighbours, len(negation), bank.shape[0] - int(outside))
    if k < 1:
        raise ValueError("negation_share needs at least two bank samples")
    to_negation, _ = nearest_neighbours(queries, negation.flat, k)
    to_bank, _ = nearest_neighbours(queries, bank, k, exclude_self=outside)
    merged = torch.cat([to_negation, to_bank], 1)  # (Q, 2k)
    is_negation = torch.cat([torch.ones_like(to_negation), torch.zeros_like(to_bank)], 1)
    order = merged.argsort(1)[:, :k]
    return is_negation.gather(1, order).mean(1)


def coverage_cut(negation_size: int, bank_size: int, unsafe_share: float = 1.0) -> float:
    """Half the share of negation items among the neighbours of a point where p_safe vanishes:
    N / (2 (N + M pi_u)); pi_u = 1 (the default) gives the smallest such share (see the module docstring)."""
    return 0.5 * negation_size / (negation_size + bank_size * unsafe_share)


def fixed_point_cut(share: Tensor, negation_size: int, rounds: int = 50) -> float:
    """The cut N / (2 (N + M pi_u)) with pi_u = mean(share >= cut), iterated from pi_u = 1; ``share`` (M,) from
    :func:`negation_share`. The cut rises as pi_u falls and pi_u falls as the cut rises, so the sequence is monotone
    and stops at the first repeat."""
    cut = coverage_cut(negation_size, share.shape[0])
    for _ in range(rounds):
        unsafe = float((share >= cut).double().mean())
        new = coverage_cut(negation_size, share.shape[0], max(unsafe, 1.0 / share.shape[0]))
        if new == cut:
            break
        cut = new
    return cut


def knn_coverage(items: Tensor, negation: Items, neighbours: int = 20, cut: str = "worst-case") -> tuple[Tensor, float]:
    """(M,) bool, the items (M, D) the negation set covers by the kNN share rule, and the cut applied:
    :func:`coverage_cut` (``"worst-case"``) or :func:`fixed_point_cut` (``"fixed-point"``)."""
    if cut not in COVERAGE_CUTS:
        raise ValueError(f"cut must be one of {COVERAGE_CUTS}, got {cut!r}")
    share = negation_share(items, negation, neighbours)
    threshold = (fixed_point_cut(share, len(negation)) if cut == "fixed-point"
                 else coverage_cut(len(negation), items.shape[0]))
    return share >= threshold, threshold


def covered_by_log_odds(log_odds: Tensor, cut: float) -> tuple[Tensor, float]:
    """Labels from stage-1 log-odds a ~= log p_unsafe / p_data (M,): covered where exp(a) >= ``cut``, and pi_u the share
    covered. exp(a) is 0 on safe content and 1 / pi_u >= 1 on negated content; the cut sits well below 1 because the
    estimate is noisy where the two sets overlap (the negated content is in both)."""
    covered = log_odds >= math.log(cut)
    return covered, float(covered.double().mean())
