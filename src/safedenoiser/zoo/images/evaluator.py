"""The evaluator the project trains itself: a Fashion-MNIST classifier used as the judge, its penultimate
features for a Frechet distance and k-NN precision / recall, and a nearest-neighbour copy detector.

No Inception weights exist offline, so the distance is labelled "FD (Fashion-MNIST classifier features)";
it is not comparable with published FID values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ... import fileio
from ...kernels import nearest_distances, nearest_neighbours
from .network import CheckpointError

JUDGE_FORMAT = "safedenoiser.fashion-judge"
FD_LABEL = "FD (Fashion-MNIST classifier features)"


class Judge(nn.Module):
    """Small CNN: 2 conv blocks (32, 64 channels) -> 128-d penultimate features -> class logits."""

    def __init__(self, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 7 * 7, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def train_judge(train_images: Tensor, train_labels: Tensor, *, epochs: int = 3, batch_size: int = 128, lr: float = 2e-3,
                seed: int = 0, progress: bool = True) -> Judge:
    """Adam, cross-entropy, random horizontal flips and 1-pixel shifts."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    judge = Judge(int(train_labels.max()) + 1)
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train_images) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    bar = tqdm(total=steps, desc="train judge", disable=not progress, mininterval=5)
    judge.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_images), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = train_images[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=shift, dims=(-2, -1))
            loss = nn.functional.cross_entropy(judge(x), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return judge.eval().requires_grad_(False)


@dataclass
class Evaluator:
    """A judge plus what was calibrated with it (stored together in one safetensors file)."""

    judge: Judge
    class_names: tuple[str, ...]
    test_accuracy: float
    copy_threshold: float  # pixel distance under which a sample counts as a copy of an image
    batch_size: int = 512

    # -- judge and features --------------------------------------------------------------------------------
    def _batched(self, images: Tensor, fn) -> Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(f"the evaluator takes (B, 1, 28, 28) images in [-1, 1], got shape {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError("images to evaluate contain NaN or infinite values")
        with torch.no_grad():
            return torch.cat([fn(images[s : s + self.batch_size].float().clamp(-1, 1))
                              for s in range(0, len(images), self.batch_size)])

    def logits(self, images: Tensor) -> Tensor:
        return self._batched(images, self.judge)

    def classify(self, images: Tensor) -> Tensor:
        """(B,) predicted class indices."""
        return self.logits(images).argmax(1)

    def top_probability(self, images: Tensor) -> Tensor:
        """(B,) the judge's largest class probability (softmax of the logits), float64."""
        return torch.softmax(self.logits(images).double(), dim=1).max(1).values

    def features(self, images: Tensor) -> Tensor:
        """(B, 128) penultimate features, float64."""
        return self._batched(images, self.judge.features).double()

    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        return float((self.classify(images) == labels).double().mean())

    # -- saving ----------------------------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> None:
        header = {"format": JUDGE_FORMAT, "class_names": json.dumps(list(self.class_names)),
                  "test_accuracy": repr(self.test_accuracy), "copy_threshold": repr(self.copy_threshold),
                  "info": json.dumps(extra or {}, sort_keys=True)}
        fileio.save_safetensors(dict(self.judge.state_dict()), path, metadata=header)

    @classmethod
    def load(cls, path: str | Path) -> Evaluator:
        tensors, header = fileio.read_safetensors(path, JUDGE_FORMAT, what="judge file", error=CheckpointError)
        names = tuple(json.loads(header["class_names"]))
        judge = Judge(len(names))
        judge.load_state_dict(tensors)
        return cls(judge.eval().requires_grad_(False), names, float(header["test_accuracy"]),
                   float(header["copy_threshold"]))


# -- distribution metrics on features -----------------------------------------------------------------------
@dataclass
class FeatureStats:
    """Mean (F,) and covariance (F, F) of a feature set, float64: all an FD needs from a reference."""

    mean: Tensor
    cov: Tensor
    count: int

    @classmethod
    def of(cls, features: Tensor) -> FeatureStats:
        if features.shape[0] < 2:
            raise ValueError("feature statistics need at least two samples")
        f = features.double()
        return cls(f.mean(0), torch.cov(f.T), f.shape[0])


def _psd_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(a: Tensor | FeatureStats, b: Tensor | FeatureStats) -> float:
    """|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2) (Heusel et al. 2017) in float64.

    The trace term uses the symmetric form, so FD(A, A) = 0 up to rounding and the result is deterministic."""
    sa = a if isinstance(a, FeatureStats) else FeatureStats.of(a)
    sb = b if isinstance(b, FeatureStats) else FeatureStats.of(b)
    root = _psd_sqrt(sa.cov)
    cross = torch.linalg.eigvalsh(root @ sb.cov @ root).clamp_min(0).sqrt().sum()
    value = (sa.mean - sb.mean).pow(2).sum() + sa.cov.trace() + sb.cov.trace() - 2 * cross
    return float(value.clamp_min(0))


def _inside_any_ball(queries: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    """(Q,) bool: query within radii[j] of some centre j."""
    out = []
    for s in range(0, len(queries), chunk):
        dist = torch.cdist(queries[s : s + chunk], centres)
        out.append((dist <= radii[None, :]).any(1))
    return torch.cat(out)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision / recall (Kynkaanniemi et al. 2019): the manifold of a set is the union of balls
    around its points with radius = distance to the k-th nearest other point. Precision = share of fake
    samples inside the real manifold; recall = share of real samples inside the fake manifold."""
    real, fake = real.double(), fake.double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} real and fake samples")
    real_radii = nearest_neighbours(real, real, k, exclude_self=True)[0][:, -1]
    fake_radii = nearest_neighbours(fake, fake, k, exclude_self=True)[0][:, -1]
    precision = float(_inside_any_ball(fake, real, real_radii).double().mean())
    recall = float(_inside_any_ball(real, fake, fake_radii).double().mean())
    return precision, recall


# -- copies -------------------------------------------------------------------------------------------------
def calibrate_copy_threshold(train: Tensor, held_out: Tensor, quantile: float = 0.01) -> float:
    """The ``quantile`` of pixel distances from held-out images to their nearest training image: a new image
    (not a copy) is closer than this to some training image only with probability ``quantile``."""
    d = nearest_distances(held_out.reshape(len(held_out), -1).float(), train.reshape(len(train), -1).float())
    return float(torch.quantile(d.double(), quantile))


def nearest_copies(samples: Tensor, references: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """For each sample: distance (B,) and index (B,) of its nearest reference image in pixel space, and
    whether that distance is below ``threshold`` (a copy)."""
    dist, index = nearest_neighbours(samples.reshape(len(samples), -1).float(), references.reshape(len(references), -1).float(), 1)
    return dist[:, 0], index[:, 0], dist[:, 0] < threshold


def copy_rates(samples: Tensor, memorised: Tensor, negated: Sequence[int], threshold: float) -> dict[str, float]:
    """Share of samples that copy a negated memorised image, and share that copy one of the others."""
    _, index, is_copy = nearest_copies(samples, memorised, threshold)
    neg = torch.isin(index, torch.as_tensor(list(negated), dtype=torch.long))
    return {"copy_negated": float((is_copy & neg).double().mean()), "copy_other": float((is_copy & ~neg).double().mean()),
            "copy_any": float(is_copy.double().mean())}


def train_fashion_judge(out: str | Path, *, epochs: int = 3, seed: int = 0, progress: bool = True) -> Evaluator:
    """Train the judge on Fashion-MNIST train, measure test accuracy, calibrate the copy threshold
    (1% quantile of test -> nearest train pixel distances) and save everything to ``out``."""
    import time

    from .data import FASHION_CLASSES, load_fashion_mnist

    start = time.time()
    train_set, test_set = load_fashion_mnist("train"), load_fashion_mnist("test")
    judge = train_judge(train_set.images, train_set.labels, epochs=epochs, seed=seed, progress=progress)
    evaluator = Evaluator(judge, FASHION_CLASSES, 0.0, 0.0)
    evaluator.test_accuracy = evaluator.accuracy(test_set.images, test_set.labels)
    evaluator.copy_threshold = calibrate_copy_threshold(train_set.images, test_set.images, 0.01)
    evaluator.save(out, {"command": f"safe-denoiser train-judge --out {out} --epochs {epochs} --seed {seed}",
                         "wall_time_s": round(time.time() - start, 1),
                         "copy_threshold_rule": "1% quantile of test->train nearest pixel distance"})
    return evaluator


@dataclass
class BrokenDetector:
    """Broken outputs, with no human in the loop: an image is broken when the judge recognises it less than real
    images (top class probability below the ``quantile`` of real held-out images') or it lies farther from every
    real image than real images do (pixel distance to the nearest image of ``bank`` above the ``1 - quantile``
    quantile of real held-out images'). The judge alone is not enough: it is confident on pure noise. At
    ``quantile`` 0.005 at most 1% of real held-out images count as broken."""

    evaluator: Evaluator
    bank: Tensor  # (M, D) real images (training split), flattened
    min_probability: float
    max_distance: float

    @classmethod
    def calibrate(cls, evaluator: Evaluator, bank: Tensor, held_out: Tensor, quantile: float = 0.005) -> BrokenDetector:
        bank = bank.reshape(len(bank), -1).float()
        prob = evaluator.top_probability(held_out)
        dist = nearest_distances(held_out.reshape(len(held_out), -1).float(), bank).double()
        return cls(evaluator, bank, float(torch.quantile(prob, quantile)), float(torch.quantile(dist, 1 - quantile)))

    def __call__(self, images: Tensor) -> Tensor:
        """(B,) bool: broken images."""
        far = nearest_distances(images.reshape(len(images), -1).float().clamp(-1, 1), self.bank).double()
        return (self.evaluator.top_probability(images) < self.min_probability) | (far > self.max_distance)
