"""Seconds per image of diffusers' StableDiffusionPipeline at Stable Diffusion 1.5's real size (random weights, no
download): plain, the safe-denoiser hook in the conditional and paper modes, and the authors' formulation (``reference``
mode), with negation sets of 515 and 100,000 random latents, all in one process (issue 23, item 5; the paper reports
+0.6% per image with 515 items).

Model: ``UNet2DConditionModel`` with SD 1.5's ``unet/config.json`` written out below (860M parameters) and SD 1.5's
``AutoencoderKL`` and CLIP text encoder (``CLIPTextModel``, SD 1.5's text config); 512x512 images -> 4x64x64
latents; fp16 on CUDA. No CLIP vocabulary ships offline: the MiniLM package's WordPiece tokenizer (77 tokens) feeds
the random CLIP encoder (ids < 30,522 < 49,408), which costs what CLIP's costs. Scheduler: DDIM
with SD's scaled-linear schedule, ``--steps`` steps (default 50), CFG 7.5. Each configuration runs once to warm up,
then ``--repeats`` times, alternating configurations so that drifts hit all of them; reported: the median seconds per
image and its ratio to plain. The corrections act at every step (no window): the upper bound of the overhead.

Run on a GPU:   python benchmarks/sd15_hook_timing.py --out results/sd15_hook_timing.json
On the CPU the real size is far too slow (minutes per image); ``--tiny`` runs the same code on a small UNet / VAE of
the same structure (8x8 latents, sets of 20 and 200) in float32, which is what the test suite checks.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

import torch

#: SD 1.5's unet/config.json (runwayml/stable-diffusion-v1-5), the fields UNet2DConditionModel reads.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
                 freq_shift=0, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                 "DownBlock2D"),
                 mid_block_type="UNetMidBlock2DCrossAttn",
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
                 mid_block_scale_factor=1.0, act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768,
                 attention_head_dim=8)
#: SD 1.5's vae/config.json.
SD15_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
#: The same structure at a size the CPU runs in seconds (64x64 images, 8x8 latents).
TINY_UNET = {**SD15_UNET, "sample_size": 8, "block_out_channels": (32, 32, 64, 64), "layers_per_block": 1,
             "norm_num_groups": 8, "cross_attention_dim": 32, "attention_head_dim": 4}
TINY_VAE = {**SD15_VAE, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 4,
            "sample_size": 64}
#: SD 1.5's text_encoder/config.json (CLIP ViT-L/14's text tower).
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
TINY_TEXT = {**SD15_TEXT, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "projection_dim": 32}
TEXT_TOKENS = 77
PROMPT = "a photograph of an astronaut riding a horse"
REFERENCE_ITEMS = 1000  # the conditional mode's reference set (random latents, shifted away from the negation set)


def build_pipeline(tiny: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """StableDiffusionPipeline of random-weight SD 1.5 parts (tokenizer: MiniLM's, see the module docstring)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from safedenoiser.zoo.t2i.text import minilm_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), model_max_length=TEXT_TOKENS)
    text_encoder = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT if tiny else SD15_TEXT)))
    unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD15_UNET))
    vae = AutoencoderKL(**(TINY_VAE if tiny else SD15_VAE))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def random_latents(count: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, shift: float = 0.0,
                   seed: int = 1, chunk: int = 4096) -> torch.Tensor:
    """``count`` N(shift, 1) latents, drawn in chunks on ``device``."""
    gen = torch.Generator(device).manual_seed(seed)
    out = torch.empty(count, *shape, device=device, dtype=dtype)
    for start in range(0, count, chunk):
        part = out[start: start + chunk]
        part.copy_(torch.randn(part.shape, generator=gen, device=device, dtype=torch.float32) + shift)
    return out


def corrections(negation: Any, reference: Any) -> dict[str, Any]:
    """The timed configurations of one negation set: factories of corrections (None: plain)."""
    from safedenoiser import make_correction

    return {"conditional": lambda: make_correction(negation, "conditional", reference=reference),
            "paper": lambda: make_correction(negation, "paper", eta=1.0),
            "reference (authors)": lambda: make_correction(negation, "reference")}


def time_call(pipe: Any, batch: int, steps: int, device: torch.device, correction: Any = None) -> float:
    """Seconds per image of one pipeline call (prompt to decoded images), with the hook attached when ``correction``
    is given (attach and detach included)."""
    from safedenoiser.pipelines import attach_safe_denoiser

    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    handle = attach_safe_denoiser(pipe, correction) if correction is not None else None
    try:
        pipe([PROMPT] * batch, height=size, width=size, num_inference_steps=steps,
             guidance_scale=7.5, generator=torch.Generator(device).manual_seed(0), output_type="pt")
    finally:
        if handle is not None:
            handle.detach()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / batch


def run(tiny: bool = False, sizes: tuple[int, ...] | None = None, steps: int | None = None, repeats: int = 3,
        batch: int = 1, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Time every configuration; returns the table as a dict (``rows``: configuration, negation size, seconds per
    image, ratio to plain)."""
    from tqdm.auto import tqdm

    from safedenoiser import NegationSet
    from safedenoiser.methods import ReferenceSet

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
    dtype = torch.float16 if dev.type == "cuda" and not tiny else torch.float32
    sizes = sizes or ((20, 200) if tiny else (515, 100_000))
    steps = steps or (4 if tiny else 50)
    pipe = build_pipeline(tiny, dev, dtype)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    reference = ReferenceSet(random_latents(min(REFERENCE_ITEMS, max(sizes)), shape, dev, dtype, shift=1.0, seed=2))
    configs: dict[str, Any] = {"plain": None}
    for n in sizes:
        negation = NegationSet(random_latents(n, shape, dev, dtype))
        configs.update({f"{name}, N={n}": factory for name, factory in corrections(negation, reference).items()})
    times: dict[str, list[float]] = {name: [] for name in configs}
    for name, factory in configs.items():  # warm-up (kernels, caches, squared norms of the sets)
        time_call(pipe, batch, steps, dev, factory() if factory else None)
    for _ in tqdm(range(repeats), desc="sd15 hook timing", disable=not progress):
        for name, factory in configs.items():
            times[name].append(time_call(pipe, batch, steps, dev, factory() if factory else None))
    plain = statistics.median(times["plain"])
    rows = [{"configuration": name, "seconds_per_image": round(statistics.median(t), 5),
             "ratio": round(statistics.median(t) / plain, 4)} for name, t in times.items()]
    return {"size": "tiny" if tiny else "sd15", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
            platform.processor() or "cpu", "dtype": str(dtype).replace("torch.", ""), "steps": steps, "batch": batch,
            "repeats": repeats, "negation_sizes": list(sizes), "reference_items": len(reference),
            "image_size": shape[1] * pipe.vae_scale_factor, "latent_shape": list(shape), "threads": torch.get_num_threads(),
            "command": " ".join(sys.argv), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"{result['size']}: {result['image_size']}x{result['image_size']} images, latents "
             f"{'x'.join(map(str, result['latent_shape']))}, {result['dtype']} on {result['device']}, {result['steps']} "
             f"DDIM steps, CFG, batch {result['batch']}, median of {result['repeats']}", "",
             "| configuration | s / image | x plain |", "|---|---|---|"]
    lines += [f"| {r['configuration']} | {r['seconds_per_image']:.4g} | {r['ratio']:.4f} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small UNet / VAE of the same structure (CPU, seconds)")
    parser.add_argument("--sizes", default=None, help="negation set sizes, comma separated (default 515,100000)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 50; tiny: 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="images per pipeline call")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--out", default=None, help="write the result as JSON here (and a .md beside it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None
    result = run(args.tiny, sizes, args.steps, args.repeats, args.batch, args.device)
    text = markdown(result)
    print(text)
    if args.out:
        from pathlib import Path

        from safedenoiser.fileio import write_text

        write_text(args.out, json.dumps(result, indent=2) + "\n")
        write_text(Path(args.out).with_suffix(".md"), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
