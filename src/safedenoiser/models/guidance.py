"""Classifier-free guidance, in one place (Ho & Salimans 2022, arXiv 2207.12598).

* the combination ``base + w (cond - base)`` (:func:`combine`); the base branch is the null condition's prediction, or
  a negative condition's (a negative prompt or class replaces the null branch: ``neg + w (cond - neg)``,
  :func:`base_condition`);
* where a correction acts (:func:`guidance_path`): on the guided prediction, corrected once (``"guided"``; a
  correction with a ``guided`` method, the conditional mode, receives both branches: :func:`correct_guided`), or on
  every branch before the combination (``"branches"``, paper Eq. 8; the null branch runs in the correction's
  ``"null"`` stream when it has streams). ``"auto"``: ``guided`` for corrections marked ``acts_on_guided``
  (nonlinear in x0), else ``branches``. Corrections affine in x0 give the same result either way, as the CFG weights
  (1 - w, w) sum to one;
* :class:`GuidedDenoiser`: CFG of a denoiser ``D(x, sigma, **cond)``, optionally with a correction.

Used by the class-conditional image model, the exact mixtures, the safe CFG wrapper of the conditional mode, the
text-to-image pipeline and the diffusers hook. Corrections are duck-typed (``correction(x, sigma, x0) -> x0``), so
this module sits below ``methods``.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Callable

from torch import Tensor

GUIDANCE_PATHS = ("auto", "branches", "guided")
Correction = Callable[[Tensor, Any, Tensor], Tensor]


def combine(base: Tensor, cond: Tensor, scale: float) -> Tensor:
    """``base + scale (cond - base)``: the guided prediction (eps, v or x0 alike: the combination is affine)."""
    return base + scale * (cond - base)


def base_condition(null: Any, negative: Any) -> Any:
    """The condition of the base branch: ``negative`` (a negative prompt or class) when given, else ``null``."""
    return null if negative is None else negative


def guidance_path(where: str, correction: Any) -> str:
    """``"guided"`` or ``"branches"``: ``where`` itself, or for ``"auto"`` ``guided`` when the correction is marked
    ``acts_on_guided``."""
    if where not in GUIDANCE_PATHS:
        raise ValueError(f"unknown guidance path {where!r}; choose one of {GUIDANCE_PATHS}")
    if where == "auto":
        return "guided" if getattr(correction, "acts_on_guided", False) else "branches"
    return where


def correct_guided(correction: Correction, x: Tensor, sigma: Any, base: Tensor, cond: Tensor, scale: float,
                   combined: Tensor | None = None, **branch_inputs: Any) -> Tensor:
    """The guided prediction ``combine(base, cond, scale)`` (``combined`` when the caller has it) corrected once at
    (x, sigma). A correction with a ``guided(x, sigma, base, cond, scale, combined=, **branch_inputs)`` method gets
    both branches (the conditional mode reduces the text direction of flagged requests); ``branch_inputs`` go to it
    only. Returns ``combined`` itself when nothing acts, as the corrections do."""
    guided = getattr(correction, "guided", None)
    if guided is not None:
        return guided(x, sigma, base, cond, scale, combined=combined, **branch_inputs)
    return correction(x, sigma, combine(base, cond, scale) if combined is None else combined)


class GuidedDenoiser:
    """``D_w(x, sigma, **cond) = D_b + w (D_c - D_b)``, D_c the request's prediction, D_b the base branch: the null
    condition (keyword arguments ``null``, default ``class_labels=None``) or, when given, the ``negative`` condition
    that replaces it. w = 1 without a negative condition is the plain conditional (one model call).

    With a ``correction``: ``where="guided"`` corrects the guided prediction once (:func:`correct_guided`);
    ``"branches"`` corrects every branch before the combination, the base branch in the correction's ``"null"``
    stream; ``"auto"`` (default) chooses by :func:`guidance_path`.
    """

    def __init__(self, denoiser: Callable[..., Tensor], guidance: float, *, null: dict[str, Any] | None = None,
                 negative: dict[str, Any] | None = None, correction: Correction | None = None, where: str = "auto"):
        guidance = float(guidance)
        if not math.isfinite(guidance):
            raise ValueError(f"guidance must be finite, got {guidance}")
        self.denoiser, self.guidance, self.correction = denoiser, guidance, correction
        self.where = guidance_path(where, correction)
        self.null = {"class_labels": None} if null is None else dict(null)
        self.negative = None if negative is None else dict(negative)

    @property
    def base_condition(self) -> dict[str, Any]:
        """The keyword arguments of the base branch: the negative condition, else the null one."""
        return base_condition(self.null, self.negative)

    def _single(self) -> bool:
        return self.guidance == 1.0 and self.negative is None

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        correction = self.correction
        if correction is None:
            c = self.denoiser(x, sigma, **cond)
            if self._single():
                return c
            return combine(self.denoiser(x, sigma, **self.base_condition), c, self.guidance)
        if self.where == "guided":
            c = self.denoiser(x, sigma, **cond)
            if self._single():
                return correction(x, sigma, c)
            base = self.denoiser(x, sigma, **self.base_condition)
            return correct_guided(correction, x, sigma, base, c, self.guidance)
        c = correction(x, sigma, self.denoiser(x, sigma, **cond))
        if self._single():
            return c
        stream = getattr(correction, "stream", None)
        with stream("null") if stream is not None else nullcontext():
            base = correction(x, sigma, self.denoiser(x, sigma, **self.base_condition))
        return combine(base, c, self.guidance)
