"""Generation at scale: prompts x seeds -> images + one JSON record per image; resumable and sharded by rank.

Every item has its own seed (its own generator), so an image does not depend on which rank made it or on the
other items; item ``i`` belongs to rank ``i mod WORLD_SIZE`` (``RANK`` / ``WORLD_SIZE`` as set by ``torchrun``
or ``accelerate launch``). Outputs: ``OUT/images/NNNNNN.png``, ``OUT/records/NNNNNN.json`` (both written
atomically; an item whose image and record exist is skipped on a rerun), ``OUT/records.jsonl`` (all
records so far) and ``OUT/grid.png`` (both rewritten by each rank when it finishes).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .. import fileio
from ..textio import read_text_file

SEED_COLUMNS = ("seed", "evaluation_seed", "sd_seed")
GUIDANCE_COLUMNS = ("guidance", "evaluation_guidance", "guidance_scale", "sd_guidance_scale")


@dataclass
class PromptItem:
    index: int
    prompt: str
    seed: int
    guidance: float | None = None
    categories: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the other CSV columns, kept in the record


def _first(row: dict[str, str], columns: Sequence[str]) -> str | None:
    for column in columns:
        value = row.get(column)
        if value not in (None, ""):
            return value
    return None


def read_prompts(path: str | Path, seed: int = 0) -> list[PromptItem]:
    """Prompts from a CSV (column ``prompt``; seed from seed / evaluation_seed / sd_seed, guidance from guidance /
    evaluation_guidance, ``categories``; other columns kept) or a text file (one prompt a line, seed ``seed + i``).
    Rows without a seed get ``seed + i``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    items: list[PromptItem] = []
    text = read_text_file(path)  # UTF-8 (a byte-order mark allowed); binary / other encodings refused by name
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise ValueError(f"{path} has no 'prompt' column (columns: {reader.fieldnames})")
        for i, row in enumerate(reader):
            try:
                row_seed = _first(row, SEED_COLUMNS)
                guidance = _first(row, GUIDANCE_COLUMNS)
                item_seed = int(float(row_seed)) if row_seed is not None else seed + i
                item_guidance = float(guidance) if guidance is not None else None
            except ValueError as err:
                raise ValueError(f"{path}, row {i + 2}: bad seed or guidance ({err})") from err
            used = {"prompt", "categories", *SEED_COLUMNS, *GUIDANCE_COLUMNS}
            items.append(PromptItem(i, row["prompt"], item_seed, item_guidance, row.get("categories") or None,
                                    {k: v for k, v in row.items() if k not in used and k is not None}))
    else:
        lines = [line.strip() for line in text.splitlines()]
        items = [PromptItem(i, line, seed + i) for i, line in enumerate(t for t in lines if t)]
    if not items:
        raise ValueError(f"no prompts in {path}")
    return items


def rank_and_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) from the environment, (0, 1) when not launched in parallel."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    return rank, world


def _paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    return out_dir / "images" / f"{index:06d}.png", out_dir / "records" / f"{index:06d}.json"


SETTINGS_FILE = "settings.json"
LOCK_FILE = ".records.lock"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Store ``settings`` in ``OUT/settings.json`` on the first run; on a rerun refuse other settings by name
    (the items already there would otherwise be skipped and kept, silently mixing two runs). Check and write hold
    ``OUT/.records.lock`` (the lock of :func:`merge_records`): of two runs started together with other settings,
    exactly one is accepted."""
    path = out_dir / SETTINGS_FILE
    settings = jsonable(settings)
    with fileio.file_lock(out_dir / LOCK_FILE):
        if not path.is_file():
            fileio.write_text(path, json.dumps(settings, sort_keys=True, indent=1, allow_nan=False))
            return
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {path} ({err}); use another --out folder") from err
    if stored != settings:
        old, new = _flatten(stored), _flatten(settings)
        diffs = [f"{key}: {old.get(key, '(unset)')!r} there, {new.get(key, '(unset)')!r} now"
                 for key in sorted(set(old) | set(new)) if old.get(key, "(unset)") != new.get(key, "(unset)")]
        raise ValueError(f"{out_dir} holds results generated with other settings ({'; '.join(diffs[:4])}"
                         f"{'; ...' if len(diffs) > 4 else ''}); use another --out folder, or delete it to regenerate")


def _check_item(record_path: Path, item: PromptItem, guidance: float) -> None:
    """The record of an item that will be skipped must be of this prompt, seed and guidance."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {record_path} ({err}); delete it to regenerate item {item.index}") from err
    there = (record.get("prompt"), record.get("seed"), record.get("guidance"))
    if there != (item.prompt, item.seed, guidance):
        raise ValueError(f"item {item.index} in {record_path.parent.parent} was generated from prompt/seed/guidance "
                         f"{there!r}, the prompt file now gives {(item.prompt, item.seed, guidance)!r}; "
                         "use another --out folder")


def _to_pil(array: Any) -> list[Any]:
    """(B, H, W, C) floats in [0, 1] -> PIL images, as diffusers' ``numpy_to_pil``."""
    import numpy as np
    from PIL import Image

    pixels = (np.asarray(array) * 255).round().astype("uint8")
    return [Image.fromarray(p[..., 0], mode="L") if p.shape[-1] == 1 else Image.fromarray(p) for p in pixels]


def generate(pipe: Any, items: Sequence[PromptItem], out_dir: str | Path, *, hook: Any = None, method: str = "plain",
             parameters: dict[str, Any] | None = None, steps: int = 50, guidance: float = 7.5, batch_size: int = 1,
             rank: int | None = None, world_size: int | None = None, progress: bool = True,
             generator_device: str = "cpu", settings: dict[str, Any] | None = None, **call_kwargs: Any) -> dict[str, Any]:
    """Generate this rank's share of ``items`` with ``pipe`` (a diffusers text-to-image pipeline, optionally with a
    :class:`~safedenoiser.pipelines.SafeDenoiserHook` ``hook`` attached) into ``out_dir``.

    ``call_kwargs`` (height, width, negative_prompt, ...) go to every pipeline call. Items of one batch share a
    guidance scale. The method, parameters, steps, guidance, call arguments and ``settings`` (model, dtype, ...
    given by the caller) are stored in ``OUT/settings.json``; a rerun with others is refused by name, as is a
    rerun whose prompt file gives an item another prompt, seed or guidance. An image with NaN pixels (a float16
    overflow, say) stops the run with an error instead of being written. The pipeline's own progress bar is turned
    off: one bar counts the run's images. Returns ``done`` (generated now), ``skipped`` (already there), ``mine``
    (this rank's), ``changed`` (this rank's images the correction acted on, :func:`correction_changed`) and ``grid``
    (``OUT/grid.png``, rewritten by each rank when it finishes).

    Batches are fixed by the item list (:func:`fixed_batches`): a rerun after a kill, with the same ``batch_size``
    and world size, writes images and records byte-identical to an uninterrupted run.
    """
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not math.isfinite(guidance):
        raise ValueError(f"guidance must be finite, got {guidance}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} is an existing file")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "records").mkdir(parents=True, exist_ok=True)
    call = {k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str, type(None)))}
    check_settings(out_dir, {"method": method, "parameters": parameters or {}, "steps": steps, "guidance": guidance,
                             "call": call, **(settings or {})})
    for folder in (out_dir, out_dir / "images", out_dir / "records"):
        fileio.remove_stale_temps(folder)

    def scale(item: PromptItem) -> float:
        return item.guidance if item.guidance is not None else guidance

    mine = [item for item in items if item.index % world_size == rank]
    done = {item.index for item in mine if all(p.exists() for p in _paths(out_dir, item.index))}
    for item in mine:
        if item.index in done:
            _check_item(_paths(out_dir, item.index)[1], item, scale(item))
    # batches are fixed by position, not by what is left: a rerun after a kill regenerates a whole batch of which an
    # item is missing (writing only the missing ones), so every number is computed in the same batch as uninterrupted
    batches = [batch for batch in fixed_batches(mine, batch_size, scale) if any(i.index not in done for i in batch)]
    todo = sum(len([i for i in batch if i.index not in done]) for batch in batches)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # one bar per run (images), not one per call
    bar = tqdm(total=todo, desc=f"generating{f' (rank {rank}/{world_size})' if world_size > 1 else ''}", unit="img",
               disable=not progress)
    import numpy as np

    for batch in batches:
        g = scale(batch[0])
        generators = [torch.Generator(generator_device).manual_seed(item.seed) for item in batch]
        if hook is not None:
            hook.reset_trace()
        pixels = pipe([item.prompt for item in batch], num_inference_steps=steps, guidance_scale=g, generator=generators,
                      output_type="np", **call_kwargs).images
        for item, image in zip(batch, pixels):
            if not np.isfinite(np.asarray(image)).all():
                raise ValueError(f"item {item.index} (seed {item.seed}): the pipeline produced NaN or infinite pixels "
                                 "(a float16 overflow?); nothing was written for it: use --dtype float32 "
                                 "or a smaller --max-weight")
        traces = hook.summary(len(batch)) if hook is not None else [None] * len(batch)
        for item, image, trace in zip(batch, _to_pil(pixels), traces):
            if item.index in done:
                continue
            image_path, record_path = _paths(out_dir, item.index)
            fileio.write_with(image_path, lambda tmp: image.save(tmp, format="PNG"))
            record = {**asdict(item), "guidance": g, "steps": steps, "method": method, "parameters": parameters or {},
                      "image": str(image_path.relative_to(out_dir)), "correction": trace, "call": call}
            fileio.write_text(record_path, json.dumps(jsonable(record), sort_keys=True, allow_nan=False))
            bar.update(1)
    bar.close()
    merge_records(out_dir)
    changed = sum(1 for item in mine if correction_changed(_read_record(_paths(out_dir, item.index)[1])))
    with fileio.file_lock(out_dir / LOCK_FILE):  # every rank writes it when done: the last one shows every image
        grid = write_grid(out_dir, title=method)
    return {"done": todo, "skipped": len(mine) - todo, "mine": len(mine), "changed": changed,
            "grid": None if grid is None else str(grid)}


def fixed_batches(items: Sequence[PromptItem], batch_size: int, scale: Any) -> list[list[PromptItem]]:
    """``items`` in runs of at most ``batch_size`` consecutive items of one guidance scale: a function of the item
    list alone (never of what a previous run left), so every item is always computed in the same batch."""
    batches: list[list[PromptItem]] = []
    for item in items:
        if batches and len(batches[-1]) < batch_size and scale(batches[-1][0]) == scale(item):
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def _read_record(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def correction_changed(record: dict[str, Any]) -> bool:
    """True when the record's correction acted with a non-zero weight at some step (else the image is plain)."""
    trace = record.get("correction") or {}
    return bool(trace.get("steps_active")) and float(trace.get("max_weight") or 0.0) > 0.0


GRID_IMAGES = 64


def write_grid(out_dir: str | Path, title: str = "", limit: int = GRID_IMAGES) -> Path | None:
    """``OUT/grid.png``: the first ``limit`` images of the run in item order, captioned with ``title`` and a mark
    on each image the correction changed; None when there is no image yet."""
    from ..zoo.images.grids import labelled_grid

    out_dir = Path(out_dir)
    paths = sorted((out_dir / "images").glob("*.png"))[:limit]
    if not paths:
        return None
    marks = [correction_changed(_read_record(out_dir / "records" / f"{p.stem}.json")) for p in paths]
    caption = f"{title}: {len(paths)} images" + (f", {sum(marks)} changed by the correction (red mark)" if any(marks) else "")
    return labelled_grid(paths, out_dir / "grid.png", caption, marks=marks)


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float written as a string ("inf", "-inf", "nan"): strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return str(value)


def merge_records(out_dir: str | Path) -> Path:
    """Rewrite ``OUT/records.jsonl`` from every finished record, in item order. Ranks merge one at a time
    (a lock file), so the last one to finish lists every record and none is dropped."""
    out_dir = Path(out_dir)
    target = out_dir / "records.jsonl"
    with fileio.file_lock(out_dir / LOCK_FILE):
        lines = [p.read_text(encoding="utf-8").strip() for p in sorted((out_dir / "records").glob("*.json"))]
        fileio.write_text(target, "".join(line + "\n" for line in lines))
    return target
