"""The negation and reference sets a user really has (issue 19, item 4): a class's images from either split, of any
size, with a share of items of other classes mixed in (label noise), and balanced sets of allowed classes; all
encoded from image files through ``negation build``'s own code (:func:`build_user_set`), as a user builds them.

``benchmarks/t2i_sets.py`` measures the text-to-image defence against these sets' size, source and noise.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..zoo.images.data import ImageData
from ..negation import NegationSet


@dataclass
class DrawnSet:
    """Images drawn from a labelled split, with each image's label and index in the split."""

    images: Tensor  # (N, C, H, W) in [-1, 1]
    labels: Tensor  # (N,) int64
    indices: Tensor  # (N,) int64, rows of the split
    description: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


def balanced_counts(total: int, classes: int) -> list[int]:
    """``total`` split over ``classes`` as evenly as possible: the first ``total mod classes`` get one more."""
    if classes < 1 or total < 0:
        raise ValueError(f"need classes >= 1 and total >= 0, got classes={classes}, total={total}")
    base, extra = divmod(total, classes)
    return [base + (c < extra) for c in range(classes)]


def _class_rows(data: ImageData, label: int) -> Tensor:
    if data.labels is None:
        raise ValueError(f"{data.source} has no labels: sets by class need a labelled split")
    return torch.nonzero(data.labels == label).flatten()


def noisy_class_set(data: ImageData, label: int, size: int, noise: float = 0.0, seed: int = 0) -> DrawnSet:
    """``size`` items meant to be of class ``label``: the first ``size - k`` images of that class in ``data`` and
    ``k = round(noise * size)`` images drawn uniformly without replacement (generator seeded with ``seed``) from the
    images of every other class: a set in which a share ``noise`` of the items was mislabelled."""
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    noisy = round(noise * size)
    own = _class_rows(data, label)
    if size - noisy > len(own):
        raise ValueError(f"class {data.class_names[label]!r} has {len(own)} images in {data.source}, asked for "
                         f"{size - noisy}")
    others = torch.nonzero(data.labels != label).flatten()
    pick = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))[:noisy]]
    rows = torch.cat([own[: size - noisy], pick])
    name = data.class_names[label]
    what = f"first {size - noisy} '{name}' of {data.source}" + (
        f" + {noisy} of other classes (noise {noise:.0%}, seed {seed})" if noisy else "")
    return DrawnSet(data.images[rows], data.labels[rows], rows, what)


def balanced_set(data: ImageData, exclude: Sequence[int], total: int | None = None) -> DrawnSet:
    """The first images of every class not in ``exclude``, ``balanced_counts(total, classes)`` of each (in class
    order); ``total=None``: every image of those classes."""
    classes = [c for c in range(len(data.class_names)) if c not in set(exclude)]
    rows = [_class_rows(data, c) for c in classes]
    counts = [len(r) for r in rows] if total is None else balanced_counts(total, len(classes))
    for c, r, k in zip(classes, rows, counts):
        if k > len(r):
            raise ValueError(f"class {data.class_names[c]!r} has {len(r)} images in {data.source}, asked for {k}")
    picked = torch.cat([r[:k] for r, k in zip(rows, counts)])
    what = f"{'all' if total is None else total} images of {len(classes)} classes of {data.source}"
    return DrawnSet(data.images[picked], data.labels[picked], picked, what)


def build_user_set(images: Tensor, role: str = "negation", model: str | Path | None = None, *,
                   batch_size: int = 8, progress: bool = False) -> NegationSet:
    """What ``safe-denoiser negation build --model MODEL --images FOLDER [--role reference]`` makes of these images:
    they are written as 8-bit PNG files (``(x + 1) * 127.5``, rounded) to a temporary folder and encoded by
    :func:`~safedenoiser.pipelines.negation_build.build_from_folder` for the pipeline ``model`` (default: the shipped
    ``fashion-t2i``). ``role='reference'`` returns a :class:`~safedenoiser.methods.conditional.ReferenceSet`."""
    from ..methods.conditional import ReferenceSet
    from ..pipelines.examples import save_images
    from ..pipelines.negation_build import build_from_folder
    from ..zoo.t2i.pipeline import SHIPPED_NAME

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / role
        save_images(images, folder, role)
        path = Path(tmp) / f"{role}.safetensors"
        build_from_folder(model or SHIPPED_NAME, folder, path, role=role, batch_size=batch_size, progress=progress)
        return (ReferenceSet if role == "reference" else NegationSet).load(path)


def describe(negation: NegationSet) -> dict[str, Any]:
    """Size, space and content hash of a set (for benchmark records)."""
    return {"items": len(negation), "space": negation.space, "content_hash": negation.content_hash}
