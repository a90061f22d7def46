"""One call that protects a diffusers pipeline: :func:`attach_safe_denoiser` builds the correction (by default the
conditional mode, with a reference set derived from the pipeline when none is given) and installs
:class:`~safedenoiser.pipelines.hook.SafeDenoiserHook`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..methods import Correction, make_correction
from ..negation import NegationSet, NegationSetError
from .hook import SafeDenoiserHook, negation_differences
from .reference import cached_reference, derive_reference


def attach_safe_denoiser(pipe: Any, negation: NegationSet | Correction | str | Path, mode: str | None = None, *,
                         check: bool = True, guidance: str = "auto", **knobs: Any) -> SafeDenoiserHook:
    """Attach the safe denoiser to ``pipe``; returns a handle (also a context manager) whose ``detach()`` removes it.

    ``negation`` is a :class:`NegationSet`, a path to one, or a ready :class:`Correction` (then ``mode`` and
    ``knobs`` are ignored); otherwise ``make_correction(negation, mode, **knobs)``. The default ``mode`` is
    ``conditional``, the mode that stops prompts (``docs/guide/conditional.md``): with no ``reference=`` set it derives
    one from the pipeline's own samples of harmless prompts (:func:`~safedenoiser.pipelines.reference.derive_reference`,
    cached beside the negation set when ``negation`` is a path). Other modes: ``paper``, ``calibrated``,
    ``substitution``, ``reference`` (the authors' code) with their knobs (``eta``, ``window``, ``log_threshold`` ...).
    With ``check`` a set whose metadata names a different VAE (factors, weights, channels) is refused.
    ``guidance``: ``"branches"`` corrects every CFG branch; ``"guided"`` corrects the guided x0 of two-branch CFG and
    adds the same change to both branches; ``"auto"`` (default) is ``"branches"`` except for corrections marked
    ``acts_on_guided`` (nonlinear in x0).
    """
    path = Path(negation) if isinstance(negation, (str, Path)) else None
    if path is not None:
        negation = NegationSet.load(path)
    if isinstance(negation, Correction):
        correction = negation
    else:
        mode = mode or "conditional"
        if check:  # refuse a mismatched set before any sampling for a derived reference
            diffs = negation_differences(pipe, negation)
            if diffs:
                raise NegationSetError("negation set does not match the pipeline: " + "; ".join(diffs))
        if mode == "conditional" and knobs.get("reference") is None:
            if path is not None:
                knobs["reference"] = cached_reference(pipe, negation, path, steps=20, guidance=3.0)[0]
            else:
                knobs["reference"] = derive_reference(pipe, negation)
        correction = make_correction(negation, mode, **knobs)
    return SafeDenoiserHook(pipe, correction, check=check, guidance=guidance)
