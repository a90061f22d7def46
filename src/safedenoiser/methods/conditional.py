"""A safe denoiser for conditional models with ONE reference set shared by every condition (this project).

For a condition c the exact safe denoiser is E_safe[x0|x,c] = E[x0|x,c] + beta*(x,c) (E[x0|x,c] - E_unsafe[x0|x,c])
(paper Eq. 5 per condition; docs/guide/conditional.md); beta*(x, c) needs densities per condition, which a bank per
class or prompt cannot give. What carries the condition for free is the model's own prediction x0_hat = D(x, sigma,
c). Notation: x_n the negation set, y_m the reference set (allowed content, :class:`ReferenceSet`), E_neg[x0|x],
E_ref[x0|x] their kernel (softmax) means at x with bandwidth sigma (the exact denoisers of the two empirical
distributions), d = E_neg - E_ref.

Decomposition: if the unsafe content does not depend on the condition, E[x0|x,c] = (1-rho) E_safe[x0|x,c] + rho E_neg[x0|x]
with rho = P(unsafe|x,c). The mode forms x0' = x0_hat + r (E_ref[x0|x] - E_neg[x0|x]) (version 5, docs/conditional.md;
the estimators, gates, blends and updates of earlier versions are recorded there with their measurements):

* projection: with E_safe ~ E_ref, rho is the coordinate of x0_hat on the axis d: share = <x0_hat - E_ref, d> / |d|^2
  (exact when E_safe[x0|x,c] = E_ref[x0|x]), r = max(share, 0) * flag, so x0' has E_ref's coordinate along d and keeps
  the rest of x0_hat;
* decision gate on a latch: flag = sigmoid(L) where L > 0, else 0, with L the running maximum over the trajectory's
  calls of the kernel classifier log-odds at x0_hat, log g + log[(1/N) sum_n k_h(x0_hat, x_n)] - log[(1/M) sum_m
  k_h(x0_hat, y_m)], h = bandwidth_scale * tau(sigma), tau the posterior spread: a request that looked unsafe at high
  noise stays flagged, one that never did is bit-identical to the plain sampler;
* classifier-free guidance (:meth:`ConditionalCorrection.guided`): a flagged request loses the share ``guard * flag``
  of its text direction w (x0_c - x0_u) (with a negative prompt: of g - x0_empty, the empty prompt's branch); with a
  ``concept`` (words naming the negated content, version 6) it is steered away from them instead,
  x0_empty + s (x0_c - x0_concept), which keeps the allowed part of a partly unsafe request more often;
* blend: x0' <- x0' + flag clip(share - (1 - dropped), 0, 1) (E_ref - x0'), dropped = guard * flag on guided calls
  (0 otherwise): without guidance only the part beyond the unsafe mean (CFG extrapolation) is pulled to E_ref; a
  prediction whose text direction was dropped is the unguided model's, pulled by its whole share (the unguided
  model's own samples are broken 6.9% of the time on the text-to-image benchmark).

State: the latch keeps one per-row value per *stream* for the current trajectory; it restarts when the batch size
changes or a row's sigma goes up (a new sampling run); :meth:`ConditionalCorrection.reset` forgets it. Classifier-free
guidance: :class:`SafeClassifierFreeGuidance` corrects the guided prediction once by default (as the diffusers hook's
guided path does), one state per request; with ``where="branches"`` the null branch uses its own stream ``"null"``.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..models.guidance import GuidedDenoiser
from ..negation import ItemSet, NegationSet, ReferenceSet, ReferenceSetError  # the sets' home; importable from here too
from .base import Correction, Proposal

TEXTS = ("drop", "project")
NEGATIVES = ("drop", "steer")


def posterior_spread(sigma: Tensor, sigma_data: float) -> Tensor:
    """tau(sigma) = sigma s_d / sqrt(sigma^2 + s_d^2): the posterior std of x0 given x = x0 + sigma n for data of
    per-coordinate scale s_d (exact for Gaussian data; -> sigma at small sigma, -> s_d at large sigma)."""
    return sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)


class ConditionalCorrection(Correction):
    """Mode ``conditional``: condition-aware substitution with one shared :class:`ReferenceSet` (module docstring).
    Knobs: ``guard`` (main knob: the share of a flagged request's text direction removed under CFG), ``text`` ('drop'
    default, 'project'), ``negative`` (with a negative prompt: 'drop' default, 'steer'; see :meth:`guided`),
    ``concept`` (words naming the negated content: a flagged request is steered away from them, see :meth:`guided`;
    needs a text pipeline), ``steer`` s (the scale of that steered direction, default 1: the request minus the concept,
    not extrapolated), ``gain`` g
    (prior odds of the classifier), ``bandwidth_scale`` (classifier kernel width in
    units of tau(sigma)), ``sigma_data`` s_d, ``log_threshold`` (acts where ``log_odds`` > it), ``window``.
    Diagnostics: ``weight`` r, ``log_odds``, ``classifier_log_odds``, ``bandwidth``, ``log_kernel_mass``,
    ``max_kernel_weight``, ``share``, ``flag``, ``dropped`` (guided calls).

    ``acts_on_guided = True``: the correction is nonlinear in x0, so a pipeline hook must apply it to the guided x0
    of classifier-free guidance, not to each branch.
    """

    acts_on_guided = True

    KNOBS = ("reference", "guard", "text", "negative", "concept", "steer", "gain", "bandwidth_scale", "sigma_data",
             "log_threshold")

    def __init__(self, negation: NegationSet, reference: ReferenceSet, *, gain: float = 1.0, bandwidth_scale: float = 1.0,
                 sigma_data: float = 0.5, log_threshold: float = -math.inf, text: str = "drop", guard: float = 1.0,
                 negative: str = "drop", concept: str | None = None, steer: float = 1.0,
                 check_reference: bool = True, **kwargs: Any):
        super().__init__(negation, **kwargs)
        if not isinstance(reference, ItemSet):  # a ReferenceSet, or a NegationSet wrapped as one below
            raise ReferenceSetError(f"the conditional mode needs a ReferenceSet of allowed items, got {type(reference).__name__}")
        if not isinstance(reference, ReferenceSet):
            reference = ReferenceSet(reference.data, space=reference.space, source=reference.source,
                                     metadata=reference.metadata, validate=False)
        if reference.item_shape != negation.item_shape:
            raise ReferenceSetError(f"reference set has item shape {reference.item_shape} but the negation set has "
                                    f"{negation.item_shape}; encode both the same way")
        if reference.space != negation.space:
            raise ReferenceSetError(f"reference set lives in space {reference.space!r} but the negation set in "
                                    f"{negation.space!r}; encode both the same way")
        if reference.device != negation.device:  # the sets are compared now and at every call: one device
            reference = reference.to(negation.device)
        if check_reference:
            reference.check_against(negation)
        if not gain >= 0 or not math.isfinite(gain):
            raise ValueError(f"gain must be a finite number >= 0, got {gain}")
        if not bandwidth_scale > 0 or not math.isfinite(bandwidth_scale):
            raise ValueError(f"bandwidth_scale must be a finite number > 0, got {bandwidth_scale}")
        if not sigma_data > 0 or not math.isfinite(sigma_data):
            raise ValueError(f"sigma_data must be a finite number > 0, got {sigma_data}")
        if text not in TEXTS:
            raise ValueError(f"unknown text rule {text!r}; choose one of {TEXTS}")
        if not 0.0 <= guard <= 1.0:
            raise ValueError(f"guard must be in [0, 1], got {guard}")
        self.reference, self.gain, self.bandwidth_scale = reference, gain, bandwidth_scale
        self.sigma_data, self.log_threshold = sigma_data, log_threshold
        self.text, self.guard = text, float(guard)
        if negative not in NEGATIVES:
            raise ValueError(f"unknown negative-prompt rule {negative!r}; choose one of {NEGATIVES}")
        self.negative = negative
        if concept is not None and (not isinstance(concept, str) or not concept.strip()):
            raise ValueError(f"concept must be a non-empty text naming the negated content, got {concept!r}")
        if not math.isfinite(steer) or steer < 0:
            raise ValueError(f"steer must be a finite number >= 0 (a guidance scale), got {steer}")
        self.concept, self.steer = concept, float(steer)
        self._local = threading.local()  # per-thread run state: latches per stream, current stream, pending text direction

    @property
    def _states(self) -> dict[str, tuple[Tensor, Tensor]]:
        states = getattr(self._local, "states", None)
        if states is None:
            states = self._local.states = {}
        return states

    @property
    def _stream(self) -> str:
        return getattr(self._local, "stream", "default")

    def reset(self) -> None:
        """Forget the per-row priors of every stream of the calling thread (a new sampling run). The diffusers hook calls
        it at the start of every pipeline call (``scheduler.set_timesteps``); it also happens when a call's batch size
        differs from the previous call's or a row's sigma goes up. State is per thread: one correction can serve
        several threads at once, each thread running one trajectory at a time."""
        self._local.states = {}

    @contextmanager
    def stream(self, name: str) -> Iterator[ConditionalCorrection]:
        """Calls inside use the latch state of stream ``name`` (e.g. the null branch of CFG) instead of the default one."""
        previous, self._local.stream = self._stream, name
        try:
            yield self
        finally:
            self._local.stream = previous

    def _latch(self, sigma: Tensor, evidence: Tensor) -> Tensor:
        """Per-row running maximum of ``evidence`` over the calls of this trajectory (stream); restarts on a new run."""
        states = self._states
        state = states.get(self._stream)
        if state is not None:
            prior, last = state
            if prior.shape != evidence.shape or prior.device != evidence.device or bool((sigma > last * (1 + 1e-6)).any()):
                state = None
        prior = evidence if state is None else torch.maximum(state[0], evidence)
        states[self._stream] = (prior, sigma)
        return prior

    def guided(self, x: Tensor, sigma: Tensor | float, x0_uncond: Tensor, x0_cond: Tensor, guidance: float,
               combined: Tensor | None = None, null: Callable[[Tensor], Tensor] | None = None,
               concept: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Classifier-free guidance corrected once: the latch reads the guided x0 g = x0_u + w (x0_c - x0_u); for flagged
        rows (flag > 0) the text direction T = w (x0_c - x0_u) is then removed by the share ``guard * flag`` before
        the projection and blend act on the result: x0 = g - guard flag T', with T' by ``text``: ``drop`` (default)
        T' = T (x0_u + w (1 - guard flag)(x0_c - x0_u)), so the request's unsafe content is not re-added at middle
        noise, off the correction's axis; ``project``: T' = the component of T along d = E_neg - E_ref where positive
        (measured: does not stop explicit image requests, the unsafe structure is off d). guard 0: version 3. Rows never
        flagged are bit-identical to plain CFG. ``x`` is the (conditional) sample in VE form; ``combined`` the guided x0
        if the caller has it (returned as is, the same object, when nothing acts).

        ``null(rows)``: when the null branch x0_u is not the empty prompt's (a negative prompt), the x0 of the empty
        prompt for the (B,) bool ``rows`` (x0_u elsewhere); it is called for flagged rows only, and their text direction
        becomes T = g - x0_empty (``negative="drop"``, default), so dropping it lands on the unconditional prediction,
        not on the negative prompt's (which, naming the concept, is itself unsafe); ``negative="steer"``:
        T = x0_u - x0_empty, only the base is replaced, x0_empty + w (x0_c - x0_u) at guard 1: the direction away from
        the negative prompt is kept (measured: keeps the allowed part of partly unsafe requests more often, at 1.5%
        broken images; docs/conditional.md).

        ``concept(rows)``: the x0 of the ``concept`` prompt (the words naming the negated content) for the flagged
        ``rows``, run by the pipeline for those rows only (version 6, docs/conditional.md): a flagged request is
        steered away from the concept instead of losing its whole text direction, x0 = x0_e + s (x0_c - x0_k) at
        guard 1 (x0_e the empty prompt's x0, x0_k the concept's, s = ``steer``): for "a shirt and
        trousers" it points to the shirt, for "trousers" it is small. Without ``concept``, ``negative="steer"`` uses
        the negative prompt as x0_k (version 5 had s = w). Rows never flagged never run the concept branch."""
        text = float(guidance) * (x0_cond - x0_uncond)
        guided = x0_uncond + text if combined is None else combined
        if self.guard == 0.0:
            return self(x, sigma, guided)
        local = self._local
        local.text, local.null, local.concept, local.uncond, local.cond = text, null, concept, x0_uncond, x0_cond
        local.scale = float(guidance)
        try:
            return self(x, sigma, guided)
        finally:
            local.text = local.null = local.concept = local.uncond = local.cond = None

    @property
    def is_identity(self) -> bool:
        return self.gain == 0 or super().is_identity

    def bandwidth(self, sigma: Tensor) -> Tensor:
        """h(sigma) = bandwidth_scale * tau(sigma)."""
        return self.bandwidth_scale * posterior_spread(sigma, self.sigma_data)

    def propose(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Proposal:
        if self.reference.device != x0.device:
            self.reference = self.reference.to(x0.device)
        h = self.bandwidth(sigma)
        # the kernel classifier at the predicted x0: log g + log[(1/N) sum_n k_h(x0, x_n)] - log[(1/M) sum_m k_h(x0, y_m)]
        log_odds = math.log(self.gain) + self._log_ratio(self.negation.moments(x0, h, chunk_size=self.chunk_size),
                                                         self.reference.moments(x0, h, chunk_size=self.chunk_size))
        neg = self.negation.moments(x, sigma, chunk_size=self.chunk_size)  # E_neg[x0|x], E_ref[x0|x]: bandwidth sigma
        ref = self.reference.moments(x, sigma, chunk_size=self.chunk_size)
        axis = neg.mean - ref.mean
        axis_sq = (axis * axis).sum(1).clamp_min(torch.finfo(x0.dtype).tiny)
        latched = self._latch(sigma, log_odds)
        flag = torch.where(latched > 0, torch.sigmoid(latched), torch.zeros_like(latched))  # the decision gate
        dropped = torch.zeros_like(flag)
        text = getattr(self._local, "text", None)
        if text is not None:  # guided call: remove the text direction of flagged requests (see guided())
            text = self._flagged_text(x0, text.reshape(x0.shape).to(x0.dtype), flag > 0)
            if self.text == "project":
                text = axis * (((text * axis).sum(1) / axis_sq).clamp(min=0.0))[:, None]
            dropped = self.guard * flag
            x0 = x0 - dropped[:, None] * text
        share = ((x0 - ref.mean) * axis).sum(1) / axis_sq
        r = share.clamp(min=0.0) * flag
        out = x0 + r[:, None] * (ref.mean - neg.mean)
        # blend: pull flagged rows on towards E_ref by the share beyond 1 - dropped (overshoot of the unsafe mean;
        # a dropped text direction leaves the unguided prediction, pulled by its whole share)
        pull = flag * (share - (1.0 - dropped)).clamp(0.0, 1.0)
        out = out + pull[:, None] * (ref.mean - out)
        acts = torch.logit(flag) + torch.log(share.clamp(min=0.0))  # flagged and heading to E_neg
        return Proposal(out, (acts > self.log_threshold) | (dropped > 0),
                        {"weight": r, "log_odds": acts, "log_kernel_mass": neg.log_mass,
                         "max_kernel_weight": torch.exp(neg.max_logit - neg.log_mass), "bandwidth": h,
                         "classifier_log_odds": log_odds, "share": share, "flag": flag, "dropped": dropped})

    def _flagged_text(self, guided: Tensor, text: Tensor, flagged: Tensor) -> Tensor:
        """(B, D) T', the part of the guided x0 g a flagged row loses at guard 1 (see :meth:`guided`), T elsewhere.
        x0_u, x0_c the branches of CFG (x0_u the negative prompt's when one is given), w the guidance scale, x0_e the
        empty prompt's x0 (``null``; x0_u without a negative prompt), s = ``steer``:
        concept x0_k given: T' = g - x0_e - s (x0_c - x0_k); negative prompt and ``negative="steer"``:
        T' = (x0_u - x0_e) + (w - s)(x0_c - x0_u); negative prompt: T' = g - x0_e; else T' = T = w (x0_c - x0_u)."""
        local = self._local
        null, concept = getattr(local, "null", None), getattr(local, "concept", None)
        if (null is None and concept is None) or not bool(flagged.any()):
            return text
        shape, dtype = guided.shape, guided.dtype
        uncond = local.uncond.reshape(shape).to(dtype)
        cond = local.cond.reshape(shape).to(dtype)
        empty = uncond if null is None else null(flagged).reshape(shape).to(dtype)
        if concept is not None:
            steered = guided - empty - self.steer * (cond - concept(flagged).reshape(shape).to(dtype))
        elif self.negative == "steer":  # the negative prompt is the concept (the added term is exactly 0 at s = w)
            steered = uncond - empty + (local.scale - self.steer) * (cond - uncond)
        else:
            steered = guided - empty
        return torch.where(flagged[:, None], steered, text)

    def _log_ratio(self, neg: Any, ref: Any) -> Tensor:
        """log[(1/N) sum_n k(q, x_n)] - log[(1/M) sum_m k(q, y_m)] from the two sets' kernel moments at the same queries."""
        return neg.log_mass - math.log(len(self.negation)) - ref.log_mass + math.log(len(self.reference))


class SafeClassifierFreeGuidance(GuidedDenoiser):
    """Classifier-free guidance with a safe denoiser (:class:`~safedenoiser.models.guidance.GuidedDenoiser` with a
    correction). ``where="guided"``: correction(x, sigma, N + w (C - N)), the guided prediction corrected once (what
    the diffusers hook's guided path does); ``"branches"``: N' + w (C' - N'), each branch corrected (paper Eq. 8), the
    null branch with its own latch state (stream ``"null"``). ``"auto"`` (default): ``guided`` for corrections marked
    ``acts_on_guided`` (the conditional mode), else ``branches``. Correcting branches separately lets CFG extrapolate
    the null branch's correction (w > 1 turns N' - N into a push towards the negation set for safe requests);
    correcting the guided prediction does not. ``null`` are the keyword arguments of the null condition (default
    ``class_labels=None``)."""

    def __init__(self, denoiser: Any, correction: Correction, guidance: float, null: dict[str, Any] | None = None,
                 where: str = "auto"):
        if getattr(correction, "concept", None) is not None:
            raise ValueError(f"concept={correction.concept!r} needs a text pipeline that can encode it (the diffusers "
                             "hook); a class-conditional model has no prompt to steer: drop concept")
        super().__init__(denoiser, guidance, null=null, correction=correction, where=where)
