"""Generation at scale: prompts x seeds -> images + one JSON record per image; resumable and sharded by rank.

Every item has its own seed (its own generator), so an image does not depend on which rank made it or on the
other items; item ``i`` belongs to rank ``i mod WORLD_SIZE`` (``RANK`` / ``WORLD_SIZE`` as set by ``torchrun``
or ``accelerate launch``). Outputs: ``OUT/images/NNNNNN.png``, ``OUT/records/NNNNNN.json`` (both written
atomically; an item whose image and record exist is skipped on a rerun) and ``OUT/records.jsonl`` (all
records so far, rewritten by each rank when it finishes).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

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
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
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
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        items = [PromptItem(i, text, seed + i) for i, text in enumerate(t for t in lines if t)]
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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def generate(pipe: Any, items: Sequence[PromptItem], out_dir: str | Path, *, hook: Any = None, method: str = "plain",
             parameters: dict[str, Any] | None = None, steps: int = 50, guidance: float = 7.5, batch_size: int = 1,
             rank: int | None = None, world_size: int | None = None, progress: bool = True,
             generator_device: str = "cpu", **call_kwargs: Any) -> dict[str, int]:
    """Generate this rank's share of ``items`` with ``pipe`` (a diffusers text-to-image pipeline, optionally with a
    :class:`~safedenoiser.pipelines.SafeDenoiserHook` ``hook`` attached) into ``out_dir``.

    ``call_kwargs`` (height, width, negative_prompt, ...) go to every pipeline call. Items of one batch share a
    guidance scale. Returns counts: ``done`` (generated now), ``skipped`` (already there), ``mine`` (this rank's).
    """
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "records").mkdir(parents=True, exist_ok=True)
    mine = [item for item in items if item.index % world_size == rank]
    todo = [item for item in mine if not all(p.exists() for p in _paths(out_dir, item.index))]
    def scale(item: PromptItem) -> float:
        return item.guidance if item.guidance is not None else guidance

    batches: list[list[PromptItem]] = []
    for item in todo:
        if batches and len(batches[-1]) < batch_size and scale(batches[-1][0]) == scale(item):
            batches[-1].append(item)
        else:
            batches.append([item])
    bar = tqdm(total=len(todo), desc=f"generating (rank {rank}/{world_size})", unit="img", disable=not progress)
    for batch in batches:
        g = scale(batch[0])
        generators = [torch.Generator(generator_device).manual_seed(item.seed) for item in batch]
        if hook is not None:
            hook.reset_trace()
        images = pipe([item.prompt for item in batch], num_inference_steps=steps, guidance_scale=g, generator=generators,
                      output_type="pil", **call_kwargs).images
        traces = hook.summary(len(batch)) if hook is not None else [None] * len(batch)
        for item, image, trace in zip(batch, images, traces):
            image_path, record_path = _paths(out_dir, item.index)
            tmp = image_path.with_name(image_path.name + f".tmp{os.getpid()}")
            image.save(tmp, format="PNG")
            tmp.replace(image_path)
            record = {**asdict(item), "guidance": g, "steps": steps, "method": method, "parameters": parameters or {},
                      "image": str(image_path.relative_to(out_dir)), "correction": trace,
                      "call": {k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str, type(None)))}}
            _write_atomic(record_path, json.dumps(record, sort_keys=True))
        bar.update(len(batch))
    bar.close()
    merge_records(out_dir)
    return {"done": len(todo), "skipped": len(mine) - len(todo), "mine": len(mine)}


def merge_records(out_dir: str | Path) -> Path:
    """Rewrite ``OUT/records.jsonl`` from every finished record, in item order."""
    out_dir = Path(out_dir)
    lines = [p.read_text(encoding="utf-8").strip() for p in sorted((out_dir / "records").glob("*.json"))]
    target = out_dir / "records.jsonl"
    _write_atomic(target, "".join(line + "\n" for line in lines))
    return target
