"""Shared pieces of the image commands: the EDM schedule and batched seeded generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

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
