"""Model cards for the shipped checkpoints: how each was trained, and a grid of its samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...fileio import write_text
from .common import generate
from .grids import save_grid
from .network import ClassifierFreeGuidance, load_checkpoint


def write_model_card(checkpoint: str | Path, steps: int = 12, seeds_per_row: int = 10) -> Path:
    """``<name>.md`` and ``<name>.png`` next to the checkpoint: 10 x 10 samples (one row per class for
    class-conditional models, guidance 2), seeds 0..99, Heun ``steps`` steps."""
    checkpoint = Path(checkpoint)
    model = load_checkpoint(checkpoint)
    info = model.info
    seeds = list(range(10 * seeds_per_row))
    if model.num_classes:
        classes = torch.arange(min(10, model.num_classes)).repeat_interleave(seeds_per_row)
        den = ClassifierFreeGuidance(model, 2.0)
        images = generate(den, seeds, steps, cond=lambda chunk: {"class_labels": classes[torch.as_tensor(chunk)]})
        layout = f"one row per class ({', '.join(model.class_names[:10])}), classifier-free guidance 2.0"
    else:
        images = generate(model, seeds, steps)
        layout = "unconditional"
    grid = save_grid(images, checkpoint.with_suffix(".png"), nrow=seeds_per_row)
    params = sum(p.numel() for p in model.parameters())
    subset = info.get("subset_index") or []
    if info.get("stopped_on_plateau"):
        limit_note = "; stopped by the plateau rule (`--plateau`, FD curve below)"
    elif "--time-limit" in info.get("command", ""):
        limit_note = f"; stopped by --time-limit, `--steps {info.get('steps')}` without it reproduces the run"
    else:
        limit_note = ""
    text = f"""# {checkpoint.stem}

EDM-preconditioned diffusers `UNet2DModel` ({params:,} parameters, block widths
{model.unet_kwargs['block_out_channels']}, attention at the lowest resolution), trained by this project.
Load it with `safedenoiser.zoo.images.network.load_checkpoint("{checkpoint.name}")`: the result is a denoiser
`D(x, sigma{", class_labels" if model.num_classes else ""}) -> x0` on the project's seam.

| field | value |
|---|---|
| command | `{info.get('command', '')}` |
| data | {info.get('data', '')}{f" (subset of {len(subset)} images, seed {info.get('seed')})" if subset else ""} |
| steps | {info.get('steps')} (batch {info.get('batch_size')}){limit_note} |
| wall time | {info.get('wall_time_s', 0) / 60:.1f} min on 1 thread of a shared 2-core CPU |
| seed | {info.get('seed')} |
| final loss (EMA of EDM-weighted loss) | {info.get('final_loss')} |
| classes | {', '.join(model.class_names) if model.num_classes else 'unconditional'} |

Samples (EMA weights, seeds 0-{len(seeds) - 1}, Heun {steps} steps, EDM schedule, {layout}):

![samples]({grid.name})
{fd_curve_markdown(info)}"""
    return write_text(checkpoint.with_suffix(".md"), text)


def fd_curve_markdown(info: dict[str, Any]) -> str:
    """The training run's FD curve (``train --eval-every``) as a table, or nothing when it has none."""
    curve = info.get("fd_curve") or []
    if not curve:
        return ""
    copies = "copies" in curve[-1]
    rows = "\n".join(f"| {p['step']} | {p['fd']:.2f} | " + (f"{p['copies']:.1%} | " if copies else "")
                     + f"{p['wall_s'] / 60:.1f} |" for p in curve)
    stop = " Stopped on the plateau rule." if info.get("stopped_on_plateau") else ""
    against = ("the memorised images; copies: share of samples within the copy threshold of one of them" if copies
               else "the Fashion-MNIST test set")
    header = "| step | FD | copies | wall min |\n|---|---|---|---|" if copies else "| step | FD | wall min |\n|---|---|---|"
    return (f"\nFD of plain samples during training (judge features) against {against}:{stop}\n\n"
            f"{header}\n{rows}\n")
