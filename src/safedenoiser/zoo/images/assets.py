"""Shipped and derived evaluation data: negation sets, reference feature statistics, the memorised subset.

Everything the demo and the benchmarks need can come from ``assets/fashion_eval.safetensors`` (built by
:func:`build_eval_assets` from Fashion-MNIST), so they run where the Debian Fashion-MNIST package is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ... import fileio
from .common import ASSETS
from .grids import to_uint8
from .data import FASHION_CLASSES, DataError, class_index, fashion_mnist_available, load_fashion_mnist
from .evaluator import Evaluator, FeatureStats, calibrate_copy_threshold

EVAL_ASSET = ASSETS / "fashion_eval.safetensors"
JUDGE_ASSET = ASSETS / "fashion_judge.safetensors"
MODELS = {"uncond": ASSETS / "fashion_uncond.safetensors", "cond": ASSETS / "fashion_cond.safetensors",
          "memorise": ASSETS / "fashion_memorise.safetensors"}
NEGATED_CLASS = "trouser"
SHIPPED_NEGATION = 500
SHIPPED_REFERENCE = 1000
MEMORISED_KEYS = ("memorised", "memorised_index", "memorised_copy_threshold")


def _from_uint8(images: Tensor) -> Tensor:
    return images.float() / 127.5 - 1.0


def require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}; reinstall the package or rebuild the assets (README, section 'Images')")
    return path


def load_judge() -> Evaluator:
    return Evaluator.load(require(JUDGE_ASSET, "the Fashion-MNIST judge"))


def class_negation_images(name: str = NEGATED_CLASS, count: int = SHIPPED_NEGATION) -> Tensor:
    """The first ``count`` training images of a class (Fashion-MNIST if installed, else the shipped ones)."""
    index = class_index(name, FASHION_CLASSES)
    if fashion_mnist_available():
        images = load_fashion_mnist("train").of_class(index).images
        if count > len(images):
            raise DataError(f"class {name!r} has only {len(images)} training images, asked for {count}")
        return images[:count]
    if FASHION_CLASSES[index] != NEGATED_CLASS or count > SHIPPED_NEGATION:
        raise DataError(f"Fashion-MNIST is not installed; the shipped negation set is {SHIPPED_NEGATION} "
                        f"{NEGATED_CLASS} images only (asked for {count} of {FASHION_CLASSES[index]!r})")
    return _from_uint8(_read_asset()["negation"][:count])


@dataclass
class Reference:
    """Held-out test images (of every class but the negated one) and their feature statistics."""

    images: Tensor
    stats: FeatureStats
    features: Tensor


def class_reference(evaluator: Evaluator, exclude: str = NEGATED_CLASS, count: int = SHIPPED_REFERENCE) -> Reference:
    """Held-out test images of the classes other than ``exclude``: FD statistics over all of them,
    ``count`` images (evenly spread) for precision / recall."""
    label = class_index(exclude, FASHION_CLASSES)
    if fashion_mnist_available():
        test = load_fashion_mnist("test")
        others = test.subset(torch.nonzero(test.labels != label).flatten())
        feats = evaluator.features(others.images)
        step = max(1, len(others) // count)
        return Reference(others.images[::step][:count], FeatureStats.of(feats), feats[::step][:count])
    if FASHION_CLASSES[label] != NEGATED_CLASS:
        raise DataError("Fashion-MNIST is not installed; shipped references exclude only the trouser class")
    data = _read_asset()
    images = _from_uint8(data["reference"][:count])
    stats = FeatureStats(data["ref_mean"], data["ref_cov"], int(data["ref_count"]))
    return Reference(images, stats, evaluator.features(images))


def _read_asset() -> dict[str, Tensor]:
    return fileio.read_safetensors(require(EVAL_ASSET, "the shipped evaluation data"), what="evaluation assets")[0]


def memorised_images(subset_index: list[int]) -> Tensor:
    """The training images a memorising model saw (by their indices in the Fashion-MNIST training set)."""
    if not subset_index:
        raise DataError("this checkpoint was not trained on a subset: it has no memorised images")
    if fashion_mnist_available():
        return load_fashion_mnist("train").images[torch.as_tensor(subset_index)]
    data = _read_asset()
    if "memorised" not in data or data["memorised_index"].tolist() != list(subset_index):
        raise DataError("Fashion-MNIST is not installed and the shipped memorised images belong to another subset")
    return _from_uint8(data["memorised"])


def memorised_copy_threshold(subset_index: list[int], quantile: float = 0.01) -> float:
    """Copy threshold for a model trained on a subset: the ``quantile`` of distances from held-out test images
    to their nearest image of the subset (a new image is that close to a subset image with probability
    ``quantile``)."""
    if fashion_mnist_available():
        return calibrate_copy_threshold(memorised_images(subset_index), load_fashion_mnist("test").images, quantile)
    data = _read_asset()
    if "memorised_copy_threshold" not in data or quantile != 0.01:
        raise DataError("Fashion-MNIST is not installed and the shipped assets hold no copy threshold for this subset")
    memorised_images(subset_index)  # checks that the shipped subset is this one
    return float(data["memorised_copy_threshold"])


def shipped_files() -> list[Path]:
    """The package's shipped asset files (never written unless a command is told so explicitly)."""
    return [EVAL_ASSET, JUDGE_ASSET, *MODELS.values()]


def memorise_subset(checkpoint: str | Path) -> list[int]:
    """The training-subset indices stored in a subset (memorising) checkpoint's header."""
    from .network import CheckpointError, checkpoint_info

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"--memorise-checkpoint not found: {path}")
    try:
        subset = checkpoint_info(path).get("subset_index")
    except Exception as err:  # safetensors / JSON errors of a corrupt or foreign file
        raise CheckpointError(f"cannot read the memorise checkpoint {path}: {err}") from err
    if not subset or not isinstance(subset, list):
        raise CheckpointError(f"{path} was not trained on a subset (no subset_index in its header)")
    return subset


def build_eval_assets(evaluator: Evaluator, path: Path = EVAL_ASSET, subset_index: list[int] | None = None) -> Path:
    """Write negation images, reference images and FD statistics of the reference classes (needs Fashion-MNIST),
    and the memorised training images of a subset model (without ``subset_index``, those of the file being
    replaced are kept)."""
    negation = class_negation_images(NEGATED_CLASS, SHIPPED_NEGATION)
    ref = class_reference(evaluator, NEGATED_CLASS, SHIPPED_REFERENCE)
    tensors = {"negation": to_uint8(negation), "reference": to_uint8(ref.images), "ref_mean": ref.stats.mean,
               "ref_cov": ref.stats.cov, "ref_count": torch.tensor(ref.stats.count)}
    if subset_index:
        tensors["memorised"] = to_uint8(memorised_images(subset_index))
        tensors["memorised_index"] = torch.tensor(subset_index, dtype=torch.long)
        tensors["memorised_copy_threshold"] = torch.tensor(memorised_copy_threshold(subset_index), dtype=torch.float64)
    elif Path(path).is_file():
        tensors.update(fileio.read_safetensors(path, what="evaluation assets", keys=MEMORISED_KEYS)[0])
    fileio.save_safetensors(tensors, path, metadata={
        "negated_class": NEGATED_CLASS, "negation": f"first {SHIPPED_NEGATION} training images of the class",
        "reference": "Fashion-MNIST test images of the other classes"})
    return path
