"""Sample quality during training: the FD of plain samples against the Fashion-MNIST test set (or, for a memorising
run, against its memorised images, with the share of samples that copy one of them), and the plateau rule that stops
training when it no longer improves."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .common import generate
from .evaluator import Evaluator, FeatureStats, frechet_distance, nearest_copies

EVAL_SEED = 2_000_000  # evaluation seeds never overlap the benchmarks' (0..) or the banks' (1e6..)
CLASSES = 10


def test_set_stats(evaluator: Evaluator) -> FeatureStats:
    """Judge features of the whole Fashion-MNIST test set (10,000 images, every class)."""
    from .data import load_fashion_mnist

    return FeatureStats.of(evaluator.features(load_fashion_mnist("test").images))


def evaluate_samples(denoiser: Any, evaluator: Evaluator, reference: FeatureStats, samples: int, steps: int,
                     conditional: bool, memorised: Tensor | None = None, threshold: float = 0.0) -> dict[str, float]:
    """{"fd"}: FD (judge features) of ``samples`` plain samples (Heun, ``steps``) against ``reference``; a conditional
    model is asked for every class in turn (no guidance). With ``memorised`` images also {"copies"}: the share of
    samples closer than ``threshold`` (pixels) to one of them."""
    seeds = list(range(EVAL_SEED, EVAL_SEED + samples))
    cond = (lambda chunk: {"class_labels": torch.as_tensor(list(chunk)) % CLASSES}) if conditional else None
    images: Tensor = generate(denoiser, seeds, steps, cond=cond, progress=False)
    result = {"fd": frechet_distance(evaluator.features(images), reference)}
    if memorised is not None:
        result["copies"] = float(nearest_copies(images, memorised, threshold)[2].double().mean())
    return result


def sample_fd(denoiser: Any, evaluator: Evaluator, reference: FeatureStats, samples: int, steps: int,
              conditional: bool) -> float:
    """FD of ``samples`` plain samples against ``reference`` (:func:`evaluate_samples`)."""
    return evaluate_samples(denoiser, evaluator, reference, samples, steps, conditional)["fd"]


def plateau_score(point: dict[str, float]) -> float:
    """What training should lower: the FD, or for a memorising run (points with "copies") the share of samples that
    copy none of its images (its FD against 16 images rises as samples concentrate on them, a poor guide)."""
    return 1.0 - point["copies"] if "copies" in point else point["fd"]


def plateaued(curve: Sequence[dict[str, float]], gain: float, fraction: float = 0.2, min_points: int = 4) -> bool:
    """True when the best score (:func:`plateau_score`) measured in the last ``fraction`` of the steps so far is less
    than ``gain`` (relative) better than the score at the last evaluation before that stretch.
    ``curve``: [{"step", "fd"[, "copies"]}, ...] in step order."""
    if gain <= 0 or len(curve) < min_points:
        return False
    start = (1 - fraction) * curve[-1]["step"]
    before = [plateau_score(p) for p in curve if p["step"] <= start]
    within = [plateau_score(p) for p in curve if p["step"] > start]
    return bool(before and within) and min(within) > (1 - gain) * before[-1]


def fd_by_sampler_steps(denoiser: Any, evaluator: Evaluator, reference: FeatureStats, samples: int,
                        steps: Sequence[int], conditional: bool = False) -> list[dict[str, float]]:
    """The FD-versus-sampler-steps curve of a model (same seeds at every point): [{"steps", "nfe", "fd"}, ...], to
    choose the sampler steps from the curve rather than for speed."""
    from .common import denoiser_evaluations

    return [{"steps": n, "nfe": denoiser_evaluations(n), "fd": sample_fd(denoiser, evaluator, reference, samples, n,
                                                                          conditional)} for n in steps]
