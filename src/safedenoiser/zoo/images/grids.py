"""Image grids: mosaics of generated images (:func:`save_grid`) and grids a person can read, a caption strip above a
mosaic (what ran, how many images, what the marks mean)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ... import fileio

LINE_HEIGHT = 12
CHAR_WIDTH = 6  # PIL's default bitmap font


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


def caption(image: Any, text: str) -> Any:
    """``image`` (PIL) with ``text`` above it on a white strip, wrapped to the image's width."""
    from PIL import Image, ImageDraw

    lines = [line for part in text.splitlines() for line in textwrap.wrap(part, max(16, image.width // CHAR_WIDTH - 1))]
    strip = LINE_HEIGHT * len(lines) + 4
    mode = "RGB" if image.mode not in ("L", "RGB") else image.mode
    out = Image.new(mode, (image.width, image.height + strip), "white")
    out.paste(image.convert(mode), (0, strip))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((2, 2 + i * LINE_HEIGHT), line, fill="black")
    return out


def caption_file(path: str | Path, text: str) -> Path:
    """Rewrite the PNG at ``path`` with ``text`` above it (atomically)."""
    from PIL import Image

    with Image.open(path) as image:
        labelled = caption(image.copy(), text)
    return fileio.write_with(Path(path), lambda tmp: labelled.save(tmp, format="PNG"))


def labelled_grid(images: Sequence[str | Path], path: str | Path, title: str, *, marks: Sequence[bool] | None = None,
                  columns: int = 8, scale: int = 2, pad: int = 2) -> Path:
    """A mosaic of the image files ``images`` (``columns`` a row, upscaled ``scale`` x) under the caption ``title``;
    images whose ``marks`` entry is true get a red corner mark."""
    from PIL import Image, ImageDraw

    tiles = []
    for name in images:
        with Image.open(name) as image:
            tiles.append(image.convert("RGB"))
    width = max(t.width for t in tiles) * scale
    height = max(t.height for t in tiles) * scale
    rows = -(-len(tiles) // columns)
    cols = min(columns, len(tiles))
    canvas = Image.new("RGB", (cols * (width + pad) + pad, rows * (height + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        left, top = pad + c * (width + pad), pad + r * (height + pad)
        canvas.paste(tile.resize((width, height), Image.NEAREST), (left, top))
        if marks is not None and marks[i]:
            draw.rectangle((left, top, left + max(3, width // 8), top + max(3, height // 8)), fill="red")
    labelled = caption(canvas, title)
    path = Path(path)
    return fileio.write_with(path, lambda tmp: labelled.save(tmp, format="PNG"))
