"""A safe denoiser for conditional models with ONE reference set shared by every condition (this project).

For a condition c the exact safe denoiser is E_safe[x0|x,c] = E[x0|x,c] + beta*(x,c) (E[x0|x,c] - E_unsafe[x0|x,c])
(paper Eq. 5 per condition; docs/guide/conditional.md); beta*(x, c) needs densities per condition, which a bank per
class or prompt cannot give. What carries the condition for free is the model's own prediction x0_hat = D(x, sigma,
c). Notation: x_n the negation set, y_m the reference set (allowed content, :class:`ReferenceSet`), E_neg[x0|x],
E_ref[x0|x] their kernel (softmax) means at x with bandwidth sigma (the exact denoisers of the two empirical
distributions), d = E_neg - E_ref.

Decomposition: if the unsafe content does not depend on the condition, E[x0|x,c] = (1-rho) E_safe[x0|x,c] + rho E_neg[x0|x]
with rho = P(unsafe|x,c). Every estimator below forms x0' = x0_hat + r (E_ref[x0|x] - E_neg[x0|x]).

* ``estimator="projection"`` (default): with E_safe ~ E_ref, rho is the coordinate of x0_hat on the axis d:
  share = <x0_hat - E_ref, d> / |d|^2 (exact when E_safe[x0|x,c] = E_ref[x0|x]: then x0' = E_safe exactly), and
  r = max(share, 0) * flag, so x0' has E_ref's coordinate along d and keeps the rest of x0_hat: the part of the
  prediction that heads from the allowed mean towards the unsafe mean is removed, nothing else (never beyond E_ref).
  flag = sigmoid(L) where L > 0, else 0 (``gate="decision"``, default: a request acts only once the classifier has
  decided it looks unsafe, so safe requests are bit-identical; ``gate="latch"``: sigmoid(L) everywhere, version 2,
  whose weak flags ~0.24 at high noise in 64-D let the low-sigma share bias distort safe classes).
  L is a per-request latch: the running maximum, over the calls of this trajectory, of the kernel
  classifier log-odds at x0_hat, log g + log[(1/N) sum_n k_h(x0_hat, x_n)] - log[(1/M) sum_m k_h(x0_hat, y_m)],
  h = bandwidth_scale * tau(sigma), tau the posterior spread: a request that looked unsafe at high noise (where the
  prediction carries the condition) stays flagged; a request that never did is left alone even where its share is
  biased (at low sigma E_ref collapses on single items). An explicit request (Z_s(c) = 0, x0_hat = E_neg) gets
  share = 1, flag ~ 1: x0' = E_ref, at every sigma, so the conditional guidance cannot pull it back at low noise.
  ``blend`` then pulls the whole prediction towards E_ref: x0' <- x0' + flag clip(e, 0, 1) (E_ref - x0') with
  e = share - 1 (``"overshoot"``, default: the part of a guided prediction beyond the unsafe mean is CFG extrapolation
  of unsafe content; it keeps trouser-like detail orthogonal to d; share <= 1 is untouched) or e = share (``"share"``:
  near-explicit requests become E_ref in every direction; stronger, costs the partly unsafe class), or ``"none"``.
* ``estimator="latch"`` (the lead's proposal, measured, not kept): r = sigmoid(L + log p_neg,sigma(x) - log p_ref,sigma(x)),
  the posterior of a two-part mixture with per-request prior L, kernel densities at x. It loses explicit requests in
  64-D: once x has left the negated region the x-space ratio wins over any prior (log-ratios of -10^4 at low sigma).
* ``estimator="x0"`` (first version): r = sigmoid(classifier log-odds at x0_hat) with no latch; ``update`` 'substitute'
  / 'replace' (means at x0_hat) and ``heading`` apply to it; see docs/conditional.md.

State: the latch keeps one per-row value per *stream* for the current trajectory; it restarts when the batch size
changes or a row's sigma goes up (a new sampling run); :meth:`ConditionalCorrection.reset` forgets it. Classifier-free
guidance: :class:`SafeClassifierFreeGuidance` corrects the guided prediction once by default (as the diffusers hook's
guided path does), one state per request; with ``where="branches"`` the null branch uses its own stream ``"null"``.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch
from torch import Tensor

from ..negation import NegationSet, NegationSetError
from .base import Correction, Proposal
from .calibration import coverage_cut, negation_share

UPDATES = ("posterior", "substitute", "replace")
ESTIMATORS = ("projection", "latch", "x0")
GATES = ("latch", "decision", "none")
BLENDS = ("overshoot", "share", "none")
TEXTS = ("drop", "substitute", "project", "keep")


class ReferenceSetError(ValueError):
    """A reference set that is empty, non-finite, of the wrong shape, or entirely covered by the negation set."""


class ReferenceSet(NegationSet):
    """M clean items of *allowed* content, shared by every condition, encoded exactly like the negation set
    (same space, item shape). Saved / loaded as a :class:`NegationSet` file with ``metadata['role'] = 'reference'``.

    Build it from real allowed images (recommended) or from model samples with :meth:`from_samples`, which drops
    the samples the negation set covers.
    """

    kind = "reference set"

    def __init__(self, data: Tensor, *, validate: bool = True, **kwargs: Any):
        metadata = {**(kwargs.pop("metadata", None) or {}), "role": "reference"}
        try:  # NegationSet's checks (type, shape, empty, dtype, finite), reported as a reference set's
            super().__init__(data, validate=validate, metadata=metadata, **kwargs)
        except NegationSetError as err:
            raise ReferenceSetError(str(err).replace("negation", "reference")) from err

    def __repr__(self) -> str:
        return f"ReferenceSet(n={len(self)}, item_shape={self.item_shape}, dtype={self.dtype}, space={self.space!r})"

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ReferenceSet:
        return ReferenceSet(self.data.to(device=device, dtype=dtype), space=self.space, source=self.source,
                            metadata=self.metadata, compute_dtype=self.compute_dtype, chunk_size=self.chunk_size)

    def covered_by(self, negation: NegationSet, neighbours: int = 20) -> Tensor:
        """(M,) bool: items the negation set covers, by the k-nearest-neighbour share rule of :mod:`.calibration`
        (negation items make up >= N / (2 (N + M)) of an item's ``neighbours`` nearest in negation + rest of the set)."""
        if self.item_shape != negation.item_shape:
            raise ReferenceSetError(f"reference set has item shape {self.item_shape} but the negation set has "
                                    f"{negation.item_shape}; encode both the same way")
        if len(self) < 2:
            return (torch.cdist(self.flat.double(), negation.flat.double()).min(1).values == 0)
        n, m = len(negation), len(self)
        return negation_share(self.flat, negation, neighbours) >= coverage_cut(n, m)

    def check_against(self, negation: NegationSet) -> None:
        """Raise :class:`ReferenceSetError` unless item shapes match and some items are not covered by the negation set."""
        if bool(self.covered_by(negation).all()):
            raise ReferenceSetError("the reference set is entirely covered by the negation set: it holds no allowed "
                                    "content to substitute (give images of allowed content)")

    @classmethod
    def from_samples(cls, samples: Tensor, negation: NegationSet, **kwargs: Any) -> ReferenceSet:
        """Model samples (e.g. under the null condition) minus those the negation set covers."""
        ref = cls(samples, **kwargs)
        covered = ref.covered_by(negation)
        if bool(covered.all()):
            raise ReferenceSetError("every sample is covered by the negation set: nothing is left as reference")
        meta = {**ref.metadata, "dropped_covered": int(covered.sum()), "samples": len(ref)}
        return cls(samples[~covered], space=ref.space, source=ref.source, metadata=meta)


def posterior_spread(sigma: Tensor, sigma_data: float) -> Tensor:
    """tau(sigma) = sigma s_d / sqrt(sigma^2 + s_d^2): the posterior std of x0 given x = x0 + sigma n for data of
    per-coordinate scale s_d (exact for Gaussian data; -> sigma at small sigma, -> s_d at large sigma)."""
    return sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)


class ConditionalCorrection(Correction):
    """Mode ``conditional``: condition-aware substitution with one shared :class:`ReferenceSet` (module docstring).
    Knobs: ``estimator`` ('projection' default, 'latch', 'x0'), ``gate`` ('decision' default, 'latch', 'none'; projection only),
    ``blend`` ('overshoot' default, 'share', 'none'; projection only),
    ``gain`` g (prior odds of the classifier), ``bandwidth_scale`` (classifier kernel width in units of tau(sigma)),
    ``sigma_data`` s_d, ``update`` ('posterior'; 'substitute', 'replace' for the x0 estimator), ``heading`` (1 = off),
    ``log_threshold`` (acts where ``log_odds`` > it), ``window``. Diagnostics: ``weight`` r, ``log_odds``,
    ``classifier_log_odds``, ``bandwidth``, ``log_kernel_mass``, ``max_kernel_weight``; projection: ``share``, ``flag``;
    latch: ``prior``.

    ``acts_on_guided = True``: the correction is nonlinear in x0, so a pipeline hook must apply it to the guided x0
    of classifier-free guidance, not to each branch.
    """

    acts_on_guided = True

    KNOBS = ("reference", "guard", "text", "gain", "bandwidth_scale", "sigma_data", "update", "log_threshold", "heading",
             "estimator", "gate", "blend")

    def __init__(self, negation: NegationSet, reference: ReferenceSet, *, gain: float = 1.0, bandwidth_scale: float = 1.0,
                 sigma_data: float = 0.5, update: str = "posterior", log_threshold: float = -math.inf, heading: float = 1.0,
                 estimator: str = "projection", gate: str = "decision", blend: str = "overshoot", text: str = "drop",
                 guard: float = 1.0, check_reference: bool = True, **kwargs: Any):
        super().__init__(negation, **kwargs)
        if not isinstance(reference, NegationSet):
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
        if update not in UPDATES:
            raise ValueError(f"unknown update {update!r}; choose one of {UPDATES}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
        if gate not in GATES:
            raise ValueError(f"unknown gate {gate!r}; choose one of {GATES}")
        if estimator == "projection" and update != "posterior":
            raise ValueError(f"the projection estimator uses the posterior update (kernel means at x), got update={update!r}")
        self.reference, self.gain, self.bandwidth_scale = reference, gain, bandwidth_scale
        self.sigma_data, self.update, self.log_threshold, self.heading = sigma_data, update, log_threshold, heading
        self.estimator, self.gate = estimator, gate
        if blend not in BLENDS:
            raise ValueError(f"unknown blend {blend!r}; choose one of {BLENDS}")
        self.blend = blend
        if text not in TEXTS:
            raise ValueError(f"unknown text rule {text!r}; choose one of {TEXTS}")
        if not 0.0 <= guard <= 1.0:
            raise ValueError(f"guard must be in [0, 1], got {guard}")
        self.text, self.guard = text, float(guard)
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
               combined: Tensor | None = None) -> Tensor:
        """Classifier-free guidance corrected once: the latch reads the guided x0 = x0_u + w (x0_c - x0_u); for flagged
        rows (flag > 0) the text direction T = w (x0_c - x0_u) is then replaced, by the share ``guard * flag``, before
        the projection and blend act on the result: x0 = guided - guard flag T', with T' by ``text``:
        ``drop`` (default) T' = T: the text direction is removed (x0_u + w (1 - guard flag)(x0_c - x0_u)), so the
        request's unsafe content is not re-added at middle noise, off the correction's axis; ``substitute``
        T' = w (x0_c - E_ref[x0 | x0_c]): the conditional branch is replaced by the allowed content nearest to it (the
        reference set's kernel mean at x0_c, the classifier's bandwidth h; measured: collapses on the nearest allowed
        component and leaks at few steps on 64-D mixtures); ``project`` T' = the component of T along
        d = E_neg - E_ref where positive (measured: does not stop explicit image requests, the unsafe structure is off
        d); ``keep`` (or guard 0): version 3, no change. Rows never flagged are bit-identical to plain CFG. ``x`` is the (conditional) sample in VE form; ``combined`` the guided x0
        if the caller has it (returned as is, the same object, when nothing acts)."""
        text = float(guidance) * (x0_cond - x0_uncond)
        guided = x0_uncond + text if combined is None else combined
        if self.text == "keep" or self.guard == 0.0 or self.estimator != "projection" or self.gate == "none":
            return self(x, sigma, guided)
        self._local.text, self._local.guidance = (text, x0_cond), float(guidance)
        try:
            return self(x, sigma, guided)
        finally:
            self._local.text = None

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
        probe = x0
        if self.heading > 1:
            amp = ((self.sigma_data**2 + sigma**2) / sigma**2).clamp(max=self.heading)
            probe = x + amp[:, None] * (x0 - x)
        # the kernel classifier at the predicted x0: log g + log[(1/N) sum_n k_h(x0, x_n)] - log[(1/M) sum_m k_h(x0, y_m)]
        log_odds = math.log(self.gain) + self._log_ratio(self.negation.moments(probe, h, chunk_size=self.chunk_size),
                                                         self.reference.moments(probe, h, chunk_size=self.chunk_size))
        diagnostics = {"bandwidth": h, "classifier_log_odds": log_odds}
        neg = self.negation.moments(x, sigma, chunk_size=self.chunk_size)  # E_neg[x0|x], E_ref[x0|x]: bandwidth sigma
        ref = self.reference.moments(x, sigma, chunk_size=self.chunk_size)
        reduced = torch.zeros_like(log_odds, dtype=torch.bool)
        if self.estimator == "projection":
            axis = neg.mean - ref.mean
            axis_sq = (axis * axis).sum(1).clamp_min(torch.finfo(x0.dtype).tiny)
            if self.gate == "none":
                flag = torch.ones_like(log_odds)
            else:
                latched = self._latch(sigma, log_odds)
                flag = torch.sigmoid(latched)
                if self.gate == "decision":
                    flag = torch.where(latched > 0, flag, torch.zeros_like(flag))
            pending = getattr(self._local, "text", None)
            if pending is not None:  # guided call of a flagged request: reduce CFG's text direction (see guided())
                text, cond = (t.reshape(x0.shape).to(x0.dtype) for t in pending)
                if self.text == "project":
                    text = axis * (((text * axis).sum(1) / axis_sq).clamp(min=0.0))[:, None]
                elif self.text == "substitute":  # w (x0_c - x0_u) -> w (E_ref[x0 | x0_c] - x0_u): the allowed content nearest the request
                    nearest = self.reference.moments(cond, h, chunk_size=self.chunk_size).mean
                    text = self._local.guidance * (cond - nearest)
                x0 = x0 - (self.guard * flag)[:, None] * text
                reduced = flag > 0
            share = ((x0 - ref.mean) * axis).sum(1) / axis_sq
            r = share.clamp(min=0.0) * flag
            log_odds = torch.logit(flag) + torch.log(share.clamp(min=0.0))  # acts where the request is flagged and heads to E_neg
            diagnostics.update(share=share, flag=flag)
        else:
            if self.estimator == "latch":
                prior = self._latch(sigma, log_odds)
                log_odds = prior + self._log_ratio(neg, ref)
                diagnostics["prior"] = prior
            r = torch.sigmoid(log_odds)
            if self.update != "posterior":
                neg = self.negation.moments(x0, h, chunk_size=self.chunk_size)
                ref = self.reference.moments(x0, h, chunk_size=self.chunk_size)
        target = x0 if self.update == "replace" else neg.mean
        out = x0 + r[:, None] * (ref.mean - target)
        if self.estimator == "projection" and self.blend != "none":  # pull flagged rows on towards E_ref in every direction
            excess = diagnostics["share"] - 1.0 if self.blend == "overshoot" else diagnostics["share"]
            pull = diagnostics["flag"] * excess.clamp(0.0, 1.0)
            out = out + pull[:, None] * (ref.mean - out)
        return Proposal(out, (log_odds > self.log_threshold) | reduced,
                        {"weight": r, "log_odds": log_odds, "log_kernel_mass": neg.log_mass,
                         "max_kernel_weight": torch.exp(neg.max_logit - neg.log_mass), **diagnostics})

    def _log_ratio(self, neg: Any, ref: Any) -> Tensor:
        """log[(1/N) sum_n k(q, x_n)] - log[(1/M) sum_m k(q, y_m)] from the two sets' kernel moments at the same queries."""
        return neg.log_mass - math.log(len(self.negation)) - ref.log_mass + math.log(len(self.reference))


class SafeClassifierFreeGuidance:
    """Classifier-free guidance with a safe denoiser. ``where="guided"``: correction(x, sigma, N + w (C - N)), the
    guided prediction corrected once (what the diffusers hook's guided path does); ``"branches"``: N' + w (C' - N'),
    each branch corrected (paper Eq. 8), the null branch with its own latch state (stream ``"null"``). ``"auto"``
    (default): ``guided`` for corrections marked ``acts_on_guided`` (the conditional mode), else ``branches``.
    Correcting branches separately lets CFG extrapolate the null branch's correction (w > 1 turns N' - N into a push
    towards the negation set for safe requests); correcting the guided prediction does not. ``null`` are the keyword
    arguments of the null condition (default ``class_labels=None``)."""

    def __init__(self, denoiser: Any, correction: Correction, guidance: float, null: dict[str, Any] | None = None,
                 where: str = "auto"):
        if not math.isfinite(guidance):
            raise ValueError(f"guidance must be finite, got {guidance}")
        if where not in ("auto", "branches", "guided"):
            raise ValueError(f"where must be 'auto', 'branches' or 'guided', got {where!r}")
        if where == "auto":
            where = "guided" if getattr(correction, "acts_on_guided", False) else "branches"
        self.denoiser, self.correction, self.guidance, self.where = denoiser, correction, float(guidance), where
        self.null = {"class_labels": None} if null is None else dict(null)

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        if self.where == "guided":
            c = self.denoiser(x, sigma, **cond)
            if self.guidance == 1.0:
                return self.correction(x, sigma, c)
            n = self.denoiser(x, sigma, **self.null)
            guided = getattr(self.correction, "guided", None)
            if guided is not None:
                return guided(x, sigma, n, c, self.guidance)
            return self.correction(x, sigma, n + self.guidance * (c - n))
        c = self.correction(x, sigma, self.denoiser(x, sigma, **cond))
        if self.guidance == 1.0:
            return c
        stream = getattr(self.correction, "stream", None)
        with stream("null") if stream is not None else nullcontext():
            n = self.correction(x, sigma, self.denoiser(x, sigma, **self.null))
        return n + self.guidance * (c - n)
