"""Tiny random-weight diffusers pipelines built fully offline (no hub access), for the pipeline tests.

Not a conftest: import the builders explicitly. Every builder is seeded, so two calls give identical weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

LATENT_CHANNELS = 4
IMAGE_SIZE = 16  # pixels; the tiny VAE has two blocks, so latents are 8x8


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins of GPT-2 / CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_tokenizer(folder: Path):
    """A CLIPTokenizer over single bytes (no merges) written to ``folder``."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _clip_config(projection_dim: int = 16):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=514, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                          max_position_embeddings=16, projection_dim=projection_dim, bos_token_id=512, eos_token_id=513,
                          pad_token_id=513)


def tiny_vae(seed: int = 0, shift_factor: float | None = None, scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                         latent_channels=LATENT_CHANNELS, norm_num_groups=4, sample_size=IMAGE_SIZE,
                         scaling_factor=scaling_factor, shift_factor=shift_factor)


def tiny_sd(tmp: Path, scheduler=None, prediction_type: str = "epsilon", seed: int = 0):
    """StableDiffusionPipeline: UNet2DConditionModel + AutoencoderKL + CLIPTextModel, 16x16 images."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=IMAGE_SIZE // 2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                                block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
                                attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    text_encoder = CLIPTextModel(_clip_config())
    scheduler = scheduler or DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                           clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                           prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=tiny_vae(seed), text_encoder=text_encoder, tokenizer=tiny_tokenizer(tmp / "tok"),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(tmp: Path, seed: int = 0):
    """StableDiffusion3Pipeline: SD3Transformer2DModel + two CLIP encoders (no T5: zeros), flow matching."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=IMAGE_SIZE // 2, patch_size=1, in_channels=LATENT_CHANNELS, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                        joint_attention_dim=32, pooled_projection_dim=32, out_channels=LATENT_CHANNELS)
    te1, te2 = CLIPTextModelWithProjection(_clip_config()), CLIPTextModelWithProjection(_clip_config())
    tok = tiny_tokenizer(tmp / "tok")
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=tiny_vae(seed, shift_factor=0.0609, scaling_factor=1.5305), text_encoder=te1,
                                    tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- running the tiny pipelines and the x0 their schedulers imply ----------------------------------------------
STEPS = 4


def run(pipe, seed=0, guidance=1.0, **kw):
    """Latents of one prompt, STEPS steps, seeded."""
    kw = {"num_inference_steps": STEPS, "height": IMAGE_SIZE, "width": IMAGE_SIZE, "output_type": "latent",
          "guidance_scale": guidance, **kw}
    if type(pipe).__name__ == "StableDiffusion3Pipeline":
        kw["max_sequence_length"] = 16
    return torch.as_tensor(pipe("a photo", generator=torch.Generator().manual_seed(seed), **kw).images)


def with_scheduler(pipe, name, **config):
    """``pipe`` with its scheduler replaced by diffusers' ``name`` built from the same config (plus ``config``)."""
    base = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    import diffusers

    pipe.scheduler = getattr(diffusers, name).from_config({**base, **config})
    return pipe


def expected_x0(kind, sched, t, sample, out):
    """The plain x0 and VE (x, sigma) the scheduler's math implies, written from the schedulers' formulas."""
    if kind == "flow":
        s = float(sched.sigmas[sched.step_index if sched.step_index is not None else 0])
        return sample - s * out, sample / (1 - s), (s / (1 - s) if s < 1 else math.inf)
    if kind == "euler":
        sigma = float(sched.sigmas[sched.step_index if sched.step_index is not None else 0])
        if sched.config.prediction_type == "epsilon":
            return sample - sigma * out, sample, sigma
        return -sigma / math.sqrt(sigma**2 + 1) * out + sample / (sigma**2 + 1), sample, sigma
    abar = float(sched.alphas_cumprod[int(t)])
    a, s = math.sqrt(abar), math.sqrt(1 - abar)
    x0 = (sample - s * out) / a if sched.config.prediction_type == "epsilon" else a * sample - s * out
    return x0, sample / a, s / a
