"""Reading folders of images into tensors, with every unreadable file reported by name."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image file that cannot be read, or that does not have the expected size."""


@dataclass
class ImageBatch:
    images: Tensor  # (B, C, H, W) float32 in [-1, 1]
    paths: list[Path]  # the file of every row
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason, for files that were skipped


def list_images(folder: str | Path) -> list[Path]:
    """Image files (by suffix) under ``folder``, recursively, in sorted order. Symlinked files and folders are
    followed (each real folder is visited once, so a link cycle cannot loop)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise PermissionError(f"image folder is not readable: {folder}")
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        files += [Path(root) / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES and (Path(root) / n).is_file()]
    files.sort()
    if not files:
        raise ImageReadError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def read_image(path: str | Path, size: int | tuple[int, int] | None = None, mode: Literal["L", "RGB"] = "RGB",
               resize: bool = False) -> Tensor:
    """One image as (C, H, W) float32 in [-1, 1]. With ``size`` and not ``resize``, a different size is an error."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err
    if size is not None:
        want = (size, size) if isinstance(size, int) else tuple(size)  # (H, W)
        if (img.height, img.width) != want:
            if not resize:
                raise ImageReadError(f"image {path} is {img.height}x{img.width}, expected {want[0]}x{want[1]}")
            img = img.resize((want[1], want[0]), Image.BICUBIC)
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(array.copy())
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def iter_image_batches(paths: Sequence[Path], batch_size: int, *, size: int | tuple[int, int] | None = None,
                       mode: Literal["L", "RGB"] = "RGB", resize: bool = False,
                       on_error: Literal["raise", "skip"] = "raise") -> Iterator[ImageBatch]:
    """Read ``paths`` in batches. ``on_error="skip"`` leaves unreadable files out and names them in
    ``ImageBatch.skipped``; ``"raise"`` stops at the first one with an :class:`ImageReadError`."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    for start in range(0, len(paths), batch_size):
        rows, kept, skipped = [], [], {}
        for path in paths[start : start + batch_size]:
            try:
                rows.append(read_image(path, size, mode, resize))
                kept.append(Path(path))
            except ImageReadError as err:
                if on_error == "raise":
                    raise
                skipped[str(path)] = str(err)
        images = torch.stack(rows) if rows else torch.empty(0)
        yield ImageBatch(images, kept, skipped)


def read_image_folder(folder: str | Path, *, size: int | tuple[int, int] | None = None, mode: Literal["L", "RGB"] = "RGB",
                      resize: bool = False, on_error: Literal["raise", "skip"] = "raise") -> ImageBatch:
    """All images of a folder as one batch (for small folders; use :func:`iter_image_batches` for large ones)."""
    batches = list(iter_image_batches(list_images(folder), 256, size=size, mode=mode, resize=resize, on_error=on_error))
    kept = [b for b in batches if b.images.numel()]
    if not kept:
        raise ImageReadError(f"no readable images in {folder}")
    skipped = {k: v for b in batches for k, v in b.skipped.items()}
    return ImageBatch(torch.cat([b.images for b in kept]), [p for b in kept for p in b.paths], skipped)
