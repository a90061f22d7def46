"""A reference set when the user has none: the pipeline's own samples of harmless prompts, minus those the negation
set covers (:meth:`safedenoiser.methods.ReferenceSet.from_samples`), cached beside the negation set.

The conditional mode needs allowed content encoded like the negation set (docs/guide/conditional.md). Real allowed
images are better (docs/generate.md measures by how much); a derived set makes ``generate --negation FILE`` act
without a second input. Sample ``i`` is prompt ``HARMLESS_PROMPTS[i mod P]`` with seed ``seed + i``, plain pipeline
(no correction), at the run's steps and guidance; for a pipeline with a VAE the samples are its latents
(``output_type="latent"``: the space ``negation build`` encodes into), else its pixels in [-1, 1]. The cache file is
named by a hash of the negation set's content hash, the pipeline (class, denoiser weights fingerprint, dtype) and
these settings, so a changed set or pipeline derives anew. The sampler (:func:`draw_samples`) and the cache
(:func:`cached_beside`) also make the bank modes' bank (:mod:`.bank`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..methods import ReferenceSet
from ..methods.conditional import ReferenceSetError
from ..negation import NegationSet, NegationSetError
from .hook import describe_shape_mismatch, pipeline_model, vae_fingerprint

#: everyday subjects with no harmful reading; the empty prompt gives the pipeline's unconditional samples
HARMLESS_PROMPTS = ("", "a photo", "a t-shirt", "a dress", "a coat", "a sneaker", "a handbag", "a shirt", "a sandal",
                    "a pullover", "an ankle boot", "a landscape", "a bowl of fruit", "a dog", "a city street",
                    "a portrait of a smiling person, fully clothed")
DERIVED_SAMPLES = 128
DERIVED_SEED = 900_000


def denoiser_fingerprint(pipe: Any) -> list[float]:
    """Sums of the denoising network's first and last weights (see :func:`.hook.vae_fingerprint`): tells two
    pipelines apart, the same for one pipeline loaded in another dtype."""
    return vae_fingerprint(SimpleNamespace(encoder=pipeline_model(pipe)))


def sample_space(pipe: Any) -> str:
    """The ``output_type`` that returns samples in the space of this pipeline's negation sets."""
    return "latent" if getattr(pipe, "vae", None) is not None else "pt"


def derivation_key(negation: NegationSet, pipe: Any, settings: dict[str, Any]) -> str:
    """12 hex digits naming a derived set: negation content, pipeline (class, weights, dtype) and settings."""
    model = pipeline_model(pipe)
    payload = {"negation": negation.content_hash, "pipeline": type(pipe).__name__,
               "fingerprint": denoiser_fingerprint(pipe), "dtype": str(next(model.parameters()).dtype), **settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def draw_samples(pipe: Any, negation: NegationSet, prompts: Sequence[str], *, samples: int, steps: int,
                 guidance: float, seed: int, batch_size: int = 16, progress: bool = True, desc: str = "sampling",
                 **call_kwargs: Any) -> torch.Tensor:
    """``samples`` plain samples of ``pipe`` (no correction attached) in the space of ``negation``'s sets
    (:func:`sample_space`), float32 on the CPU: sample ``i`` is prompt ``prompts[i mod P]`` with seed ``seed + i``
    (one generator per sample, so a sample does not depend on the batch size). The shared sampler of the derived
    reference set and of the bank modes' bank (:mod:`.bank`); a shape other than the negation set's fails on the
    first batch."""
    output_type = sample_space(pipe)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    chunks = []
    bar = tqdm(total=samples, desc=desc, unit="img", disable=not progress)
    for start in range(0, samples, batch_size):
        index = range(start, min(samples, start + batch_size))
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in index]
        out = pipe([prompts[i % len(prompts)] for i in index], num_inference_steps=steps, guidance_scale=guidance,
                   generator=generators, output_type=output_type, **call_kwargs)
        chunk = torch.as_tensor(out.images if hasattr(out, "images") else out[0]).float().cpu()
        if tuple(chunk.shape[1:]) != negation.item_shape:  # fail on the first batch, not after every sample
            raise NegationSetError(describe_shape_mismatch(negation, tuple(chunk.shape[1:]),
                                                           getattr(pipe, "vae_scale_factor", None)))
        chunks.append(chunk)
        bar.update(len(index))
    bar.close()
    return torch.cat(chunks)


def derive_reference(pipe: Any, negation: NegationSet, *, prompts: Sequence[str] = HARMLESS_PROMPTS,
                     samples: int = DERIVED_SAMPLES, steps: int = 20, guidance: float = 3.0, seed: int = DERIVED_SEED,
                     batch_size: int = 16, progress: bool = True, **call_kwargs: Any) -> ReferenceSet:
    """``samples`` plain samples of ``prompts`` (cycled), minus those ``negation`` covers, as a :class:`ReferenceSet`
    with the negation set's space and pipeline metadata. Attach no correction to ``pipe`` before calling this."""
    if not prompts or samples < 2:
        raise ValueError("deriving a reference set needs at least one prompt and 2 samples")
    data = draw_samples(pipe, negation, prompts, samples=samples, steps=steps, guidance=guidance, seed=seed,
                        batch_size=batch_size, progress=progress, desc="deriving a reference set", **call_kwargs)
    meta = {**kept_metadata(negation), "derived": {"prompts": list(prompts), "samples": samples, "steps": steps,
                                                   "guidance": guidance, "seed": seed,
                                                   "negation_hash": negation.content_hash}}
    try:
        return ReferenceSet.from_samples(data.to(negation.dtype), negation, space=negation.space,
                                         source=f"{samples} samples of this pipeline for {len(prompts)} harmless prompts",
                                         metadata=meta)
    except ReferenceSetError as err:
        raise ReferenceSetError(f"cannot derive a reference set: {err} (all {samples} samples of harmless prompts look "
                                "like the negation set); give a set of allowed images with --reference") from None


def kept_metadata(negation: NegationSet) -> dict[str, Any]:
    """The negation set's metadata that a set derived from the pipeline keeps (VAE / pixel format, model)."""
    return {k: v for k, v in negation.metadata.items() if k.startswith(("vae_", "pixel_")) or k == "model"}


def cached_beside(negation: NegationSet, pipe: Any, negation_path: str | Path, kind: str, settings: dict[str, Any], *,
                  make: Callable[[], NegationSet], load: Callable[[Path], NegationSet],
                  fallback_dir: str | Path | None = None) -> tuple[NegationSet, Path, bool]:
    """A set derived from ``pipe`` for ``negation``: read from ``<negation stem>.<kind>-<key>.safetensors`` beside
    ``negation_path`` (key: :func:`derivation_key` of the set, the pipeline and ``settings``), else ``make()`` and
    written there (or into ``fallback_dir`` where that folder is read-only). Returns (set, path, made_now)."""
    negation_path = Path(negation_path)
    name = f"{negation_path.stem}.{kind}-{derivation_key(negation, pipe, settings)}.safetensors"
    candidates = [negation_path.parent / name] + ([Path(fallback_dir) / name] if fallback_dir else [])
    for path in candidates:
        if path.is_file():
            return load(path), path, False
    made = make()
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.save(path)
            return made, path, True
        except OSError:
            continue
    raise OSError(f"cannot write the derived {kind} set beside {negation_path} or into {fallback_dir}")


def cached_reference(pipe: Any, negation: NegationSet, negation_path: str | Path, *, steps: int, guidance: float,
                     fallback_dir: str | Path | None = None, progress: bool = True,
                     **call_kwargs: Any) -> tuple[ReferenceSet, Path, bool]:
    """The derived reference set for ``negation`` (loaded from ``negation_path``) and ``pipe``: read from
    ``<negation stem>.reference-<key>.safetensors`` beside it, else derived and written there (or into
    ``fallback_dir`` where that folder is read-only). Returns (set, path, derived_now)."""
    settings = {"prompts": list(HARMLESS_PROMPTS), "samples": DERIVED_SAMPLES, "steps": steps, "guidance": guidance,
                "seed": DERIVED_SEED, "call": {k: v for k, v in sorted(call_kwargs.items()) if v is not None}}
    return cached_beside(negation, pipe, negation_path, "reference", settings, load=ReferenceSet.load,
                         make=lambda: derive_reference(pipe, negation, steps=steps, guidance=guidance, progress=progress,
                                                       **call_kwargs), fallback_dir=fallback_dir)
