"""The bank of the ``calibrated`` and ``substitution`` modes for a diffusers pipeline: its own unguided samples.

Both modes estimate beta*(x, sigma) = pi_u p_unsafe,sigma(x) / (pi_s p_safe,sigma(x)) from a *bank* of the model's
samples (``methods.calibration``: kernel densities and the kNN split; ``methods.ratio``: a fitted density-ratio
classifier). Here the bank is ``size`` samples of the empty prompt with classifier-free guidance off
(``guidance_scale=1``), seeds ``BANK_SEED + i``, at the run's steps and image size, in the negation set's space
(latents for a pipeline with a VAE, else pixels): drawn by :func:`.reference.draw_samples` and cached beside the
negation set by :func:`.reference.cached_beside` (``<negation stem>.bank-<key>.safetensors``; the key hashes the
negation set's content, the pipeline's class, denoiser weights fingerprint and dtype, the bank size, steps, seed and
size). The fitted ratio is cached by :func:`safedenoiser.methods.ratio.fit_ratio` itself, as
``ratio-<key>.safetensors`` in the bank's folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..negation import NegationSet
from .reference import cached_beside, draw_samples, kept_metadata

BANK_SEED = 950_000
BANK_PROMPTS = ("",)  # the unconditional samples of the pipeline
BANK_GUIDANCE = 1.0  # classifier-free guidance off (diffusers: do_classifier_free_guidance is guidance_scale > 1)
DEFAULT_BANK_SIZE = 64  # as the web engine's Limits.bank


def ratio_fit() -> Any:
    """The :class:`~safedenoiser.methods.ratio.RatioFit` settings of ``--estimator ratio`` (its defaults, as the web
    engine uses; part of the fit's cache key)."""
    from ..methods.ratio import RatioFit

    return RatioFit()


@dataclass
class BankCalibration:
    """A bank mode's calibration and what to record about it: the estimator, the bank size, the bank's cache file,
    whether it was drawn now, and the fitted ratio's cache file (``ratio`` estimator)."""

    calibration: Any
    estimator: str
    bank_size: int
    bank_file: Path
    drawn: bool
    ratio_file: Path | None = None

    def record(self) -> dict[str, Any]:
        """The knobs and files each image's record carries."""
        out = {"estimator": self.estimator, "bank_size": self.bank_size, "bank": str(self.bank_file)}
        if self.ratio_file is not None:
            out["ratio_cache"] = str(self.ratio_file)
        return out


def cached_bank(pipe: Any, negation: NegationSet, negation_path: str | Path, *, size: int, steps: int,
                fallback_dir: str | Path | None = None, progress: bool = True,
                **call_kwargs: Any) -> tuple[NegationSet, Path, bool]:
    """The bank for ``negation`` (loaded from ``negation_path``) and ``pipe``: ``size`` unguided samples of the empty
    prompt, read from the cache beside the negation set or drawn and written there (module docstring). The samples
    are stored as a :class:`NegationSet` (a validated container with a content hash; ``metadata["bank"]`` says what
    they are). Returns (bank, path, drawn_now)."""
    if size < 2:
        raise ValueError(f"the bank needs at least 2 samples, got {size}")
    call = {k: v for k, v in sorted(call_kwargs.items()) if v is not None}
    settings = {"role": "bank", "prompts": list(BANK_PROMPTS), "samples": size, "steps": steps,
                "guidance": BANK_GUIDANCE, "seed": BANK_SEED, "call": call}

    def draw() -> NegationSet:
        data = draw_samples(pipe, negation, BANK_PROMPTS, samples=size, steps=steps, guidance=BANK_GUIDANCE,
                            seed=BANK_SEED, progress=progress, desc="drawing the calibration bank", **call)
        meta = {**kept_metadata(negation), "bank": {**settings, "negation_hash": negation.content_hash}}
        return NegationSet(data.to(negation.dtype), space=negation.space, metadata=meta,
                           source=f"bank: {size} unguided samples of this pipeline (empty prompt)")

    return cached_beside(negation, pipe, negation_path, "bank", settings, make=draw, load=NegationSet.load,
                         fallback_dir=fallback_dir)


def bank_calibration(pipe: Any, negation: NegationSet, negation_path: str | Path, *, estimator: str = "kernel",
                     size: int = DEFAULT_BANK_SIZE, steps: int, fallback_dir: str | Path | None = None,
                     progress: bool = True, **call_kwargs: Any) -> BankCalibration:
    """The calibration of a bank mode for ``pipe``: :func:`cached_bank`, then
    :func:`safedenoiser.methods.ratio.calibrate` with ``estimator`` (``kernel``: ``Calibration.from_bank``; ``ratio``:
    the fitted classifier, :func:`ratio_fit` settings, cached in the bank's folder). Attach no correction to ``pipe``
    before calling this."""
    from ..methods.ratio import ESTIMATORS, cache_file, calibrate

    if estimator not in ESTIMATORS:  # before any sampling
        raise ValueError(f"unknown beta* estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    bank, path, drawn = cached_bank(pipe, negation, negation_path, size=size, steps=steps, fallback_dir=fallback_dir,
                                    progress=progress, **call_kwargs)
    try:
        if estimator == "ratio":
            calibration = calibrate(bank.data, negation, "ratio", fit=ratio_fit(), cache_dir=path.parent,
                                    progress=progress)
            ratio_file = cache_file(path.parent, calibration.ratio.key)
            return BankCalibration(calibration, estimator, size, path, drawn, ratio_file)
        return BankCalibration(calibrate(bank.data, negation, estimator), estimator, size, path, drawn)
    except ValueError as err:
        raise ValueError(f"cannot calibrate on the bank {path}: {err}") from None
