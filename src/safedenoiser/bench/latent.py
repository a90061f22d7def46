"""``bench t2i --model <latent folder>``: the text-to-image benchmark on the latent testbed, diffusers' own
``StableDiffusionPipeline`` (no subclass, no fork).

The benchmark (:mod:`safedenoiser.bench.t2i`) drives ``FashionTextPipeline``'s call. :class:`LatentBenchPipeline` gives the
stock pipeline that call, and nothing else changes:

* images: the stock call's ``output_type="pt"`` (32x32 in [0, 1]) mapped to [-1, 1] and resized to 28x28
  (:func:`..zoo.latent.vae.from_vae_output`), so the same judge, broken-image detector and FD reference score both testbeds;
* ``encode_prompt(prompts) -> (B, 16, 384)``: the stock ``encode_prompt`` (MiniLM with its mask, as trained);
* the two seams of the text-side baselines, which the stock call lacks, as hooks on ``pipe.unet`` for one call:
  ``prompt_embeds_fn(step, cond)`` (SAFREE) rewrites the conditional half of ``encoder_hidden_states`` before the
  model runs; ``guidance_fn(step, t, x, uncond, cond)`` (SLD) replaces the CFG combination: the hook returns the
  branches ``[u; u + (g - u) / w]``, whose stock combination ``u + w (c' - u)`` is ``g``. Registered after a
  safe-denoiser hook, they see its corrected branches, as in the pixel pipeline. ``step`` counts model calls (one
  per step with the shipped DPM-Solver++);
* a single negative prompt for a batch is repeated per prompt (the stock call wants a list as long as the batch);
* every other attribute (``unet``, ``scheduler``, ``vae``, ``tokenizer``, ``guidance_scale`` ...) is the stock
  pipeline's, so :func:`~safedenoiser.pipelines.attach.attach_safe_denoiser` hooks the stock pipeline itself.

Negation and reference sets are VAE latents: the held-out column's come from ``negation build``'s own code on PNG
files (as for the pixel testbed); the tuning and several-concepts columns' training images are encoded with the same
encoder (:func:`~safedenoiser.pipelines.negation_build.vae_encoder`: posterior mean times the scaling factor, after
the same 28 -> 32 bicubic resize), with the same metadata, so the hook's VAE check passes. SPELL's radii are
quantiles of the plain images' distances to the set, measured on the plain images encoded the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..pipelines.hook import model_call, replace_model_output

TESTBED = "latent StableDiffusionPipeline, VAE latents"
ENCODE_BATCH = 256


class LatentBenchPipeline:
    """The stock ``StableDiffusionPipeline`` of the latent testbed behind ``FashionTextPipeline``'s call (see the
    module docstring); ``model`` names the folder in the sets' metadata."""

    def __init__(self, pipe: Any, model: str | Path = "latent"):
        self.__dict__.update(pipe=pipe, model=str(model))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["pipe"], name)

    def encode_prompt(self, prompt: str | Sequence[str]) -> Tensor:
        """Token embeddings (B, 16, 384) from the stock prompt encoding."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return self.pipe.encode_prompt(prompts, self.pipe.unet.device, 1, False)[0]

    @torch.no_grad()
    def __call__(self, *, guidance_fn: Callable[..., Tensor] | None = None,
                 prompt_embeds_fn: Callable[[int, Tensor], Tensor] | None = None, output_type: str = "pt",
                 **kwargs: Any) -> Any:
        """The stock call with ``guidance_fn`` / ``prompt_embeds_fn`` (above); ``.images``: (B, 1, 28, 28) in [-1, 1]."""
        from types import SimpleNamespace

        from ..zoo.latent.vae import from_vae_output

        if output_type != "pt":
            raise ValueError(f"the benchmark reads tensors (output_type='pt'), got {output_type!r}")
        guidance = float(kwargs.get("guidance_scale", 7.5))
        if (guidance_fn is not None or prompt_embeds_fn is not None) and not guidance > 1.0:
            raise ValueError(f"guidance_fn / prompt_embeds_fn act on the [uncond; cond] branches of classifier-free "
                             f"guidance: guidance_scale must be > 1, got {guidance}")
        negative = kwargs.get("negative_prompt")
        if isinstance(negative, str):  # the stock call takes one negative prompt per prompt for a batch
            prompt, embeds = kwargs.get("prompt"), kwargs.get("prompt_embeds")
            batch = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else len(embeds)
            kwargs["negative_prompt"] = [negative] * batch
        handles = _seam_hooks(self.pipe.unet, guidance, guidance_fn, prompt_embeds_fn)
        try:
            images = self.pipe(output_type="pt", **kwargs).images
        finally:
            for handle in handles:
                handle.remove()
        return SimpleNamespace(images=from_vae_output(images.float() * 2 - 1))

    @torch.no_grad()
    def to_set_space(self, images: Tensor) -> Tensor:
        """(N, 1, 28, 28) images in [-1, 1] -> the latents ``negation build`` stores for them (N, 4, 8, 8)."""
        from ..pipelines.negation_build import vae_encoder
        from ..zoo.latent.vae import to_vae_input

        encode = vae_encoder(self.pipe.vae)
        return torch.cat([encode(to_vae_input(images[s: s + ENCODE_BATCH]))
                          for s in range(0, len(images), ENCODE_BATCH)]) if len(images) else images

    def set_metadata(self) -> dict[str, Any]:
        """The VAE metadata ``negation build`` writes (the hook checks it against the pipeline)."""
        from ..pipelines.negation_build import vae_metadata

        return vae_metadata(self.pipe.vae, self.model)


def _seam_hooks(unet: torch.nn.Module, guidance: float, guidance_fn: Callable[..., Tensor] | None,
                prompt_embeds_fn: Callable[[int, Tensor], Tensor] | None) -> list[Any]:
    """Hooks on ``unet`` for one pipeline call: ``prompt_embeds_fn`` before it runs, ``guidance_fn`` after it (after any
    hook registered earlier); both on the [uncond; cond] batch of two-branch CFG."""
    state = {"calls": 0}
    handles = []
    if prompt_embeds_fn is not None:
        def before(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            uncond, cond = kwargs["encoder_hidden_states"].chunk(2)
            step_cond = prompt_embeds_fn(state["calls"], cond).to(cond)
            return args, {**kwargs, "encoder_hidden_states": torch.cat([uncond, step_cond])}

        handles.append(unet.register_forward_pre_hook(before, with_kwargs=True))

    def after(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        step = state["calls"]
        state["calls"] += 1
        if guidance_fn is None:
            return output
        sample, timestep, pred = model_call(args, kwargs, output)
        uncond, cond = pred.chunk(2)
        guided = guidance_fn(step, timestep, sample.chunk(2)[1], uncond, cond)
        return replace_model_output(output, torch.cat([uncond, uncond + (guided - uncond) / guidance]).to(pred.dtype))

    handles.append(unet.register_forward_hook(after, with_kwargs=True))
    return handles


def load_bench_pipeline(model: str | Path | None) -> Any:
    """The pipeline ``bench t2i --model`` runs: a saved latent ``StableDiffusionPipeline`` folder as
    :class:`LatentBenchPipeline`, else ``FashionTextPipeline`` (default: the shipped one)."""
    from ..zoo.t2i.pipeline import PipelineFolderError, load_text_pipeline
    from ..zoo.latent.pipeline import is_latent_pipeline_folder, load_latent_pipeline, shipped_model_folder

    model = None if model is None else shipped_model_folder(model)
    if model is not None and is_latent_pipeline_folder(model):
        return LatentBenchPipeline(load_latent_pipeline(model), model)
    try:
        return load_text_pipeline(model)
    except PipelineFolderError as err:
        raise PipelineFolderError(f"{model} is neither a saved FashionTextPipeline nor a saved StableDiffusionPipeline "
                                  "(no model_index.json naming one)") from err


def in_pipeline_space(pipe: Any, value: Any) -> Any:
    """``value`` (28x28 images, or a :class:`~safedenoiser.bench.t2i.BenchSets` of image sets) in the space ``pipe``
    denoises: unchanged for a pixel pipeline, encoded through the VAE for :class:`LatentBenchPipeline`."""
    if not isinstance(pipe, LatentBenchPipeline):
        return value
    if isinstance(value, Tensor):
        return pipe.to_set_space(value)
    from ..methods.conditional import ReferenceSet
    from ..negation import NegationSet

    meta = pipe.set_metadata()
    negation = NegationSet(pipe.to_set_space(value.negation.data), space="vae latents",
                           source=f"{value.negation.source}, encoded by the VAE of {pipe.model}",
                           metadata={**value.negation.metadata, **meta})
    reference = ReferenceSet(pipe.to_set_space(value.reference.data), space="vae latents",
                             source=f"{value.reference.source}, encoded by the VAE of {pipe.model}",
                             metadata={**value.reference.metadata, **meta})
    return type(value)(negation, reference, f"{value.source} (VAE latents)")


def testbed_name(pipe: Any) -> str:
    """The report's name for the pipeline's testbed."""
    return TESTBED if isinstance(pipe, LatentBenchPipeline) else "Fashion-MNIST pipeline"
