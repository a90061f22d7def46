"""Example inputs that ship: trouser images (a negation set's images), allowed images (a reference set's) and the
explicit / evasive / neutral prompt files, written from Fashion-MNIST (Debian ``dataset-fashion-mnist``) or, without
it, from the package's shipped evaluation assets. ``safe-denoiser examples --out DIR`` writes::

    DIR/trousers/trouser_0000.png ...   first training trousers (28x28 grey)
    DIR/allowed/allowed_0000.png ...    test images of the 9 other classes, evenly spread
    DIR/prompts/{explicit,evasive,neutral}.csv   rows of the shipped prompt sets (prompt, seed, category, class)
"""

from __future__ import annotations

from itertools import zip_longest
from pathlib import Path
from typing import Sequence

from torch import Tensor

from .. import fileio


def allowed_images(count: int) -> Tensor:
    """``count`` held-out images of the classes other than trouser, evenly spread, in [-1, 1]."""
    from ..zoo.images.assets import NEGATED_CLASS, class_reference, load_judge
    from ..zoo.images.data import FASHION_CLASSES, fashion_mnist_available, load_fashion_mnist

    if fashion_mnist_available():
        test = load_fashion_mnist("test")
        others = test.images[test.labels != FASHION_CLASSES.index(NEGATED_CLASS)]
    else:
        others = class_reference(load_judge(), exclude=NEGATED_CLASS).images
    step = max(1, len(others) // count)
    return others[::step][:count]


def spread_rows(rows: Sequence, key: str) -> list:
    """``rows`` reordered round-robin over the values of ``key`` (first row of each value, then the second ...), so
    the first rows of a file cover every prompt / class."""
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(getattr(row, key), []).append(row)
    return [row for layer in zip_longest(*groups.values()) for row in layer if row is not None]


def save_images(images: Tensor, folder: Path, prefix: str) -> int:
    """(N, C, H, W) images in [-1, 1] as 8-bit PNG files ``<prefix>_0000.png`` ... in ``folder``; the number is padded
    to one width per folder (at least 4 digits), so that the files sort in item order."""
    from PIL import Image

    from ..zoo.images.grids import to_uint8

    folder.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images)
    width = max(4, len(str(len(pixels) - 1)))
    for i, image in enumerate(pixels):
        array = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
        picture = Image.fromarray(array)
        fileio.write_with(folder / f"{prefix}_{i:0{width}d}.png", lambda tmp, p=picture: p.save(tmp, format="PNG"),
                          fsync=False)
    return len(pixels)


def write_examples(out: str | Path, images: int = 100, prompts: int | None = None) -> dict[str, str]:
    """Write the example inputs into ``out``; returns what went where."""
    from ..zoo.images.assets import NEGATED_CLASS, class_negation_images
    from ..zoo.t2i.prompts import CATEGORIES, shipped_prompts, write_prompt_csv

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file")
    written = {}
    count = save_images(class_negation_images(NEGATED_CLASS, images), out / "trousers", "trouser")
    written[str(out / "trousers")] = f"{count} trouser images (Fashion-MNIST training set): what must not be generated"
    count = save_images(allowed_images(images), out / "allowed", "allowed")
    written[str(out / "allowed")] = f"{count} allowed images (Fashion-MNIST test images of the 9 other classes)"
    for category in CATEGORIES:
        rows = spread_rows(shipped_prompts(category), "intended_class" if category == "neutral" else "prompt")
        rows = rows[:prompts] if prompts else rows
        path = write_prompt_csv(rows, out / "prompts" / f"{category}.csv")
        written[str(path)] = f"{len(rows)} {category} prompts"
    return written

