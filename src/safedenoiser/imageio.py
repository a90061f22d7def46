"""Reading folders of images into tensors, with every unreadable file reported by name.

Formats are decided by each file's content, never by its name, and only raster formats that Pillow decodes itself
are opened (:data:`READ_FORMATS`): PostScript / EPS / PDF (whose Pillow readers start Ghostscript) and every other
format are refused by name. Nothing is converted silently: 16-bit images are scaled to [-1, 1] (not clipped at 255),
transparent pixels are composited on a stated ``background`` (in data units, default -1: black, the background of
Fashion-MNIST-style data), and an image with several frames (animated GIF / WebP, multi-page TIFF) gives its first
frame with a warning naming the file (:class:`ImageWarning`, collected per batch in :attr:`ImageBatch.warnings`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
#: Pillow formats that are opened, decided by content: decoders inside Pillow, no external program.
READ_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"
#: Content signatures of formats that are refused, to name them in the error (never opened).
_REFUSED_SIGNATURES = ((b"%!PS", "PostScript / EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"))
DEFAULT_BACKGROUND = -1.0  # black in [-1, 1]: the background of Fashion-MNIST-style data


class ImageReadError(ValueError):
    """An image file that cannot be read, or that does not have the expected size."""


class ImageWarning(UserWarning):
    """An image read with a choice the user should know about (its first frame of several)."""


@dataclass
class ImageBatch:
    images: Tensor  # (B, C, H, W) float32 in [-1, 1]
    paths: list[Path]  # the file of every row
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason, for files that were skipped
    warnings: dict[str, str] = field(default_factory=dict)  # path -> what was chosen (first of several frames)


def list_images(folder: str | Path) -> list[Path]:
    """Image files (by suffix) under ``folder``, recursively, in sorted order. Symlinked files and folders are
    followed (each real folder is visited once, so a link cycle cannot loop)."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder} is a file")
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


def open_image(path: str | Path) -> Any:
    """``PIL.Image.open`` restricted to :data:`READ_FORMATS` by content; anything else is an :class:`ImageReadError`
    naming the file (and the format, for PostScript / EPS / PDF, which are never opened)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        return Image.open(path, formats=READ_FORMATS)
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {path}: {_content_name(path)}, not a {FORMAT_NAMES} image") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from None
    except OSError as err:
        raise ImageReadError(f"cannot read image {path}: {err.strerror or err}") from None


def _content_name(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return "unreadable content"
    for signature, name in _REFUSED_SIGNATURES:
        if head.startswith(signature):
            return f"{name} content"
    return "content of another format" if head else "an empty file"


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header only (no pixels decoded)."""
    with open_image(path) as img:
        return img.size


def read_image(path: str | Path, size: int | tuple[int, int] | None = None, mode: Literal["L", "RGB"] = "RGB",
               resize: bool = False, background: float = DEFAULT_BACKGROUND) -> Tensor:
    """One image as (C, H, W) float32 in [-1, 1]. With ``size`` and not ``resize``, a different size is an error.

    Values: 8-bit ``v / 127.5 - 1``; 16-bit ``v / 32767.5 - 1``; with transparency (alpha ``a`` in [0, 1]),
    ``a x + (1 - a) background``. Several frames: the first, with an :class:`ImageWarning` naming the file.
    Resizing is bicubic (8-bit images in Pillow's 8-bit mode, as before; others in float, clipped to [-1, 1])."""
    path = Path(path)
    if not -1.0 <= background <= 1.0:
        raise ValueError(f"background must be in [-1, 1] (data units; -1 is black), got {background}")
    want = None if size is None else ((size, size) if isinstance(size, int) else tuple(size))  # (H, W)
    with open_image(path) as img:
        try:
            frames = getattr(img, "n_frames", 1)
            img.load()
            array = _decode(img, mode, background, path, want, resize)
        except ImageReadError:
            raise
        except Exception as err:  # decoders raise many types (OSError, SyntaxError, EOFError, zlib / struct errors)
            raise ImageReadError(f"cannot read image {path}: {type(err).__name__}: {err}") from None
    if frames > 1:
        warnings.warn(f"{path} has {frames} frames; the first one is used", ImageWarning, stacklevel=2)
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def _decode(img: Any, mode: str, background: float, path: Path, want: tuple[int, int] | None,
            resize: bool) -> np.ndarray:
    """(H, W) or (H, W, 3) float32 in [-1, 1], resized to ``want`` if asked (see :func:`read_image`)."""
    from PIL import Image

    if want is not None and (img.height, img.width) != want and not resize:
        raise ImageReadError(f"image {path} is {img.height}x{img.width}, expected {want[0]}x{want[1]}")
    if img.mode in ("I", "F"):
        raise ImageReadError(f"cannot read image {path}: {'32-bit integer' if img.mode == 'I' else 'floating-point'} "
                             "pixels have no stated range; save it as an 8- or 16-bit image")
    sixteen = img.mode.startswith("I;16")
    if not sixteen and not img.has_transparency_data:  # 8-bit: Pillow's conversion and resize
        img = img.convert(mode)
        if want is not None and (img.height, img.width) != want:
            img = img.resize((want[1], want[0]), Image.BICUBIC)
        return np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    if sixteen:  # scale the full 16-bit range (Pillow's "L" conversion would clip at 255)
        grey = np.asarray(img, dtype=np.float32) / 32767.5 - 1.0
        channels = [grey] * (1 if mode == "L" else 3)
    else:  # composite on the background
        pixels = np.asarray(img.convert("LA" if mode == "L" else "RGBA"), dtype=np.float32)
        alpha = pixels[..., -1] / 255.0
        channels = [(pixels[..., c] / 127.5 - 1.0) * alpha + background * (1.0 - alpha) for c in range(pixels.shape[-1] - 1)]
    if want is not None and (img.height, img.width) != want:
        channels = [np.clip(np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize(
            (want[1], want[0]), Image.BICUBIC), dtype=np.float32), -1.0, 1.0) for c in channels]
    return (channels[0] if mode == "L" else np.stack(channels, axis=2)).astype(np.float32)


def iter_image_batches(paths: Sequence[Path], batch_size: int, *, size: int | tuple[int, int] | None = None,
                       mode: Literal["L", "RGB"] = "RGB", resize: bool = False,
                       on_error: Literal["raise", "skip"] = "raise",
                       background: float = DEFAULT_BACKGROUND) -> Iterator[ImageBatch]:
    """Read ``paths`` in batches. ``on_error="skip"`` leaves unreadable files out and names them in
    ``ImageBatch.skipped``; ``"raise"`` stops at the first one with an :class:`ImageReadError`. Warnings
    (:class:`ImageWarning`) are collected in ``ImageBatch.warnings`` by file."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    for start in range(0, len(paths), batch_size):
        rows, kept, skipped, noted = [], [], {}, {}
        for path in paths[start : start + batch_size]:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ImageWarning)
                    rows.append(read_image(path, size, mode, resize, background))
                kept.append(Path(path))
                for warning in caught:
                    if issubclass(warning.category, ImageWarning):
                        noted[str(path)] = str(warning.message)
                    else:
                        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            except ImageReadError as err:
                if on_error == "raise":
                    raise
                skipped[str(path)] = str(err)
        images = torch.stack(rows) if rows else torch.empty(0)
        yield ImageBatch(images, kept, skipped, noted)


def read_image_folder(folder: str | Path, *, size: int | tuple[int, int] | None = None, mode: Literal["L", "RGB"] = "RGB",
                      resize: bool = False, on_error: Literal["raise", "skip"] = "raise",
                      background: float = DEFAULT_BACKGROUND) -> ImageBatch:
    """All images of a folder as one batch (for small folders; use :func:`iter_image_batches` for large ones)."""
    batches = list(iter_image_batches(list_images(folder), 256, size=size, mode=mode, resize=resize, on_error=on_error,
                                      background=background))
    kept = [b for b in batches if b.images.numel()]
    if not kept:
        raise ImageReadError(f"no readable images in {folder}")
    skipped = {k: v for b in batches for k, v in b.skipped.items()}
    noted = {k: v for b in batches for k, v in b.warnings.items()}
    return ImageBatch(torch.cat([b.images for b in kept]), [p for b in kept for p in b.paths], skipped, noted)
