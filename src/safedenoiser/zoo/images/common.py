"""Shared pieces of the image commands: batched seeded generation, image grids, atomic result files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ... import fileio
from ...sampling import karras_sigmas, sample

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def edm_sigmas(steps: int) -> Tensor:
    """EDM's Karras schedule for these models: sigma in [0.002, 80], rho = 7."""
    return karras_sigmas(steps, 0.002, 80.0, 7.0)


def generate(denoiser: Callable[..., Tensor], seeds: Sequence[int], steps: int = 12, *, item_shape=(1, 28, 28),
             batch_size: int = 128, cond: Callable[[Sequence[int]], dict[str, Any]] | None = None,
             sampler: str = "heun", desc: str = "sampling", progress: bool = True) -> Tensor:
    """One sample per seed (Heun, EDM schedule), in batches; ``cond(seeds)`` gives per-batch conditioning."""
    sigmas = edm_sigmas(steps)
    out = []
    batches = [list(seeds[s : s + batch_size]) for s in range(0, len(seeds), batch_size)]
    with torch.no_grad():
        for chunk in tqdm(batches, desc=desc, disable=not progress or len(batches) < 2, leave=False):
            extra = {"cond": cond(chunk)} if cond is not None else {}
            out.append(sample(denoiser, chunk, item_shape, sigmas, sampler=sampler, **extra))
    return torch.cat(out).clamp(-1, 1)


def denoiser_evaluations(steps: int, sampler: str = "heun") -> int:
    """Network evaluations per sample: Heun uses two per step except the last."""
    return 2 * steps - 1 if sampler == "heun" else steps


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> uint8 pixels in [0, 255] (clipped, rounded), on the CPU."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def grid_array(images: Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> uint8 (rows*(H+pad), nrow*(W+pad)[, 3]) mosaic, white padding."""
    images = to_uint8(images)
    count, channels, height, width = images.shape
    rows = -(-count // nrow)
    canvas = torch.full((channels, rows * (height + pad) + pad, nrow * (width + pad) + pad), 255, dtype=torch.uint8)
    for i in range(count):
        r, c = divmod(i, nrow)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        canvas[:, top : top + height, left : left + width] = images[i]
    array = canvas.permute(1, 2, 0).numpy()
    return array[:, :, 0] if channels == 1 else array


def save_grid(images: Tensor, path: str | Path, nrow: int = 10, scale: int = 2) -> Path:
    """Save a PNG mosaic (atomically), upscaled ``scale`` x with nearest neighbour."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(grid_array(images, nrow))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return fileio.write_with(path, lambda tmp: img.save(tmp, format="PNG"))


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return fileio.write_text(path, text)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
