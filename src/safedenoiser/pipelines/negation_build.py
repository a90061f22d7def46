"""Build a negation set (or a reference set of allowed images) from image files: encode in batches, resumable,
sharded over processes, every unreadable file named.

The generic builder :func:`build_negation_set` takes any ``encode_fn(images) -> items`` (images (B, C, H, W)
in [-1, 1]); :func:`vae_encoder` gives the diffusers one, ``(latent_dist.mean - shift_factor) * scaling_factor``
(the latents a pipeline denoises). Progress is written batch by batch as atomic part files next to the output
(``OUT.parts/``), so a killed build resumes where it stopped; the parts are removed once the set is saved.

Several processes (``RANK`` / ``WORLD_SIZE`` as set by ``torchrun`` or ``accelerate launch``): batch ``k`` (images
``k B .. (k + 1) B - 1``) is encoded by rank ``k mod WORLD_SIZE``. The batches do not depend on the number of
processes, so the merged file is bit-identical to a one-process build; the rank that finishes last merges the
parts (under a lock), the others stop once their parts are written. A rerun skips the finished parts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import fileio
from ..imageio import DEFAULT_BACKGROUND, IMAGE_SUFFIXES, ImageReadError, image_size, iter_image_batches, list_images
from ..negation import NegationSet, NegationSetError

#: Above this many items the per-image hashes go to a JSONL manifest beside the set (safetensors headers are
#: limited to 100 MB); the metadata then records the manifest's name and sha256.
INLINE_HASH_LIMIT = 50_000
ROLES = {"negation": "negation", "reference": "allowed"}  # role -> what its images are called in messages
ASPECT_TOLERANCE = 1.1  # an image whose aspect ratio differs from the model's by more than this factor is stretched


@dataclass
class BuildReport:
    path: Path
    count: int  # items in the set (0 on a rank that did not merge)
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable file -> reason
    resumed_batches: int = 0  # batches taken from an interrupted run
    warnings: dict[str, str] = field(default_factory=dict)  # file -> what was chosen for it (first frame ...)
    notes: list[str] = field(default_factory=list)  # images that resizing stretches or enlarges, with their sizes
    space: str = "latents"
    role: str = "negation"
    rank: int = 0
    world_size: int = 1
    batches: int = 0  # batches this process encoded or reused
    merged: bool = True  # False on a rank whose parts another rank merges

    @property
    def items_word(self) -> str:
        """What the items are: latents in a VAE's space, images in pixel sets (singular for one)."""
        word = "image" if self.space == "pixels" else "latent"
        return word if self.count == 1 else word + "s"

    def summary(self) -> str:
        """One line: what was written where, or what this rank did."""
        what = "reference set of allowed images" if self.role == "reference" else "negation set"
        reused = f" (reused {self.resumed_batches} batches of an interrupted build)" if self.resumed_batches else ""
        if not self.merged:
            return (f"rank {self.rank} of {self.world_size}: encoded its {self.batches} batches{reused}; the rank that "
                    f"finishes last writes the {what} to {self.path}")
        return f"wrote {self.count} {self.items_word} ({what}, {self.space}) to {self.path}{reused}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_stamps(paths: Sequence[Path]) -> list[list[int] | None]:
    """(size, mtime in ns) of each file, None where it cannot be read: a changed file changes its stamp."""
    stamps: list[list[int] | None] = []
    for path in paths:
        try:
            st = path.stat()
            stamps.append([st.st_size, st.st_mtime_ns])
        except OSError:
            stamps.append(None)
    return stamps


def _read_part(path: Path) -> tuple[Tensor | None, dict[str, Any]]:
    tensors, header = fileio.read_safetensors(path, what="partial build file", keys=["data"])
    try:
        return tensors.get("data"), json.loads(header["part"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} holds no valid 'part' metadata ({type(err).__name__}: {err})") from err


def build_negation_set(paths: Sequence[str | Path], encode_fn: Callable[[Tensor], Tensor], out_path: str | Path, *,
                       batch_size: int = 16, resume: bool = True, strict: bool = False,
                       size: int | tuple[int, int] | None = None, resize: bool = False, mode: str = "RGB",
                       space: str = "latents", metadata: dict[str, Any] | None = None, dtype: torch.dtype | None = None,
                       progress: bool = True, background: float = DEFAULT_BACKGROUND, role: str = "negation",
                       rank: int = 0, world_size: int = 1) -> BuildReport:
    """Encode the images at ``paths`` in batches with ``encode_fn`` into a :class:`NegationSet` saved at ``out_path``.

    Unreadable or wrongly sized files are skipped and reported by name in the report and the metadata
    (``skipped``), or, with ``strict``, refused with :class:`~safedenoiser.imageio.ImageReadError`. With
    ``resume`` the finished batches of an interrupted run with the same inputs are reused. The metadata holds
    ``metadata`` plus the resolution, item shape, the per-image sha256, the skipped files and the reading warnings.
    ``background`` (in [-1, 1]) is what transparent pixels are composited on; ``role`` ('negation' or 'reference')
    names the set in messages and its metadata. ``rank`` / ``world_size``: this process encodes batches
    ``k`` with ``k mod world_size == rank`` (module docstring); only the last rank to finish writes ``out_path``.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ImageReadError("no images given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    out_path = _checked_output(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    parts_dir = out_path.with_name(out_path.name + ".parts")
    metadata = {**(metadata or {}), **({"role": "reference"} if role == "reference" else {})}
    options = json.loads(json.dumps({"paths": [str(p) for p in paths], "batch_size": batch_size, "size": size,
                                     "resize": resize, "mode": mode, "metadata": metadata, "dtype": str(dtype),
                                     **({"background": background} if background != DEFAULT_BACKGROUND else {})},
                                    sort_keys=True, default=str))
    signature = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
    numbers = range(rank, math.ceil(len(paths) / batch_size), world_size)
    if parts_dir.exists() and not resume:
        for part in parts_dir.glob("part-*.safetensors"):
            if world_size == 1 or _part_number(part) % world_size == rank:
                part.unlink()
    parts_dir.mkdir(exist_ok=True)
    fileio.remove_stale_temps(parts_dir)  # only temporaries whose writing process is gone
    fileio.remove_stale_temps(out_path.parent, out_path.name)  # a kill while the output itself was written
    report = BuildReport(out_path, 0, space=space, role=role, rank=rank, world_size=world_size)
    try:
        _encode_parts(paths, numbers, encode_fn, report, parts_dir, options, signature, batch_size=batch_size,
                      strict=strict, size=size, resize=resize, mode=mode, dtype=dtype, progress=progress,
                      background=background)
    except Exception:
        if world_size == 1 and not any(parts_dir.glob("part-*.safetensors")):
            shutil.rmtree(parts_dir, ignore_errors=True)  # nothing to resume: leave no empty .parts folder behind
        raise
    with fileio.file_lock(parts_dir / ".merge.lock"):
        total = math.ceil(len(paths) / batch_size)
        if not all((parts_dir / _part_name(k)).is_file() for k in range(total)):
            if world_size == 1:
                raise NegationSetError(f"parts missing in {parts_dir} after encoding; rerun to finish the build")
            report.merged = False  # another rank is still encoding; the last one to finish merges
            return report
        return _assemble(paths, out_path, parts_dir, report, signature, options, batch_size=batch_size, size=size,
                         space=space, metadata=metadata)


def _checked_output(out: str | Path) -> Path:
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"output {out} is a folder; give a .safetensors file name")
    return out


def _part_name(number: int) -> str:
    return f"part-{number:07d}.safetensors"


def _part_number(part: Path) -> int:
    try:
        return int(part.name.split("-")[1].split(".")[0])
    except (IndexError, ValueError):
        return -1


def _stale_options(parts_dir: Path, stored: dict[str, Any], options: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(stored) | set(options)) if stored.get(k) != options.get(k)]
    return (f"{parts_dir} holds the parts of an interrupted build with other {', '.join(keys) or 'options'}; "
            "rerun with --no-resume (library: resume=False) to discard them, or delete the folder")


def _checked_part(part: Path, parts_dir: Path, signature: str, options: dict[str, Any]) -> tuple[Tensor | None, dict[str, Any]]:
    try:
        data, info = _read_part(part)
    except ValueError as err:
        raise NegationSetError(f"{err}; delete {parts_dir} to restart") from err
    if info.get("signature") != signature:
        raise NegationSetError(_stale_options(parts_dir, info.get("options", {}), options))
    return data, info


def _encode_parts(paths: list[Path], numbers: range, encode_fn: Callable[[Tensor], Tensor], report: BuildReport,
                  parts_dir: Path, options: dict[str, Any], signature: str, *, batch_size: int, strict: bool, size: Any,
                  resize: bool, mode: str, dtype: torch.dtype | None, progress: bool, background: float) -> None:
    """Encode every batch of ``numbers`` that has no valid part file yet; a part is valid when it has this build's
    options and its images' sizes and modification times are unchanged (else it is encoded again)."""
    on_error = "raise" if strict else "skip"
    rank = f" (rank {report.rank} of {report.world_size})" if report.world_size > 1 else ""
    total = sum(len(paths[k * batch_size : (k + 1) * batch_size]) for k in numbers)
    bar = tqdm(total=total, desc=f"encoding {ROLES[report.role]} images{rank}", unit="img", disable=not progress)
    for number in numbers:
        part = parts_dir / _part_name(number)
        chunk = paths[number * batch_size : (number + 1) * batch_size]
        report.batches += 1
        if part.exists():
            _, info = _checked_part(part, parts_dir, signature, options)
            if info.get("stamps") == file_stamps(chunk):
                report.resumed_batches += 1
                bar.update(len(chunk))
                continue
        stamps = file_stamps(chunk)
        batch = next(iter_image_batches(chunk, len(chunk), size=size, mode=mode, resize=resize, on_error=on_error,
                                        background=background))
        info = {"signature": signature, "options": options, "stamps": stamps, "names": [str(p) for p in batch.paths],
                "hashes": [file_sha256(p) for p in batch.paths], "skipped": batch.skipped, "warnings": batch.warnings}
        tensors = {}
        if batch.images.numel():
            with torch.no_grad():
                encoded = encode_fn(batch.images)
            if encoded.shape[0] != len(batch.paths):
                raise ValueError(f"encode_fn returned {encoded.shape[0]} items for {len(batch.paths)} images")
            tensors["data"] = encoded.detach().to("cpu", dtype or encoded.dtype).contiguous()
        fileio.save_safetensors(tensors, part, metadata={"part": json.dumps(info)})
        bar.update(len(chunk))
    bar.close()


def _assemble(paths: list[Path], out_path: Path, parts_dir: Path, report: BuildReport, signature: str,
              options: dict[str, Any], *, batch_size: int, size: Any, space: str,
              metadata: dict[str, Any]) -> BuildReport:
    """Concatenate the part files (in batch order, whichever rank wrote them) into the set at ``out_path`` and
    remove them."""
    datas, names, hashes = [], [], []
    for number in range(math.ceil(len(paths) / batch_size)):
        data, info = _checked_part(parts_dir / _part_name(number), parts_dir, signature, options)
        if data is not None:
            datas.append(data)
        names += info["names"]
        hashes += info["hashes"]
        report.skipped.update(info["skipped"])
        report.warnings.update(info.get("warnings", {}))
    if not datas:
        shutil.rmtree(parts_dir, ignore_errors=True)
        raise ImageReadError(f"none of the {len(paths)} images could be read: " +
                             "; ".join(f"{k}: {v}" for k, v in list(report.skipped.items())[:5]))
    data = torch.cat(datas)
    meta = dict(metadata)
    height, width = (size, size) if isinstance(size, int) else (size or (None, None))
    meta.update({"resolution": [height, width] if height else None, "item_shape": list(data.shape[1:]),
                 "count": int(data.shape[0]), "skipped": report.skipped})
    if report.warnings:
        meta["warnings"] = report.warnings
    root = _common_root(names)
    entries = [{"name": _relative(n, root), "sha256": h} for n, h in zip(names, hashes)]
    if len(entries) <= INLINE_HASH_LIMIT:
        meta["images"] = entries
    else:
        manifest = out_path.with_name(out_path.name + ".images.jsonl")
        fileio.write_text(manifest, "".join(json.dumps(e) + "\n" for e in entries))
        meta["image_manifest"] = {"file": manifest.name, "sha256": file_sha256(manifest)}
    meta["image_root"] = str(root)
    NegationSet(data, space=space, source=str(root), metadata=meta).save(out_path)
    shutil.rmtree(parts_dir)
    fileio.remove_stale_temps(out_path.parent, out_path.name)  # a second look: a pid seen alive at the start may be reused
    report.count = int(data.shape[0])
    return report


def _common_root(names: list[str]) -> Path:
    return Path(os.path.commonpath([str(Path(n).parent) for n in names])) if names else Path(".")


def _relative(name: str, root: Path) -> str:
    try:
        return str(Path(name).relative_to(root))
    except ValueError:
        return name


def vae_encoder(vae: Any, device: torch.device | str | None = None) -> Callable[[Tensor], Tensor]:
    """``images -> (latent_dist.mean - shift_factor) * scaling_factor``: the latents a diffusers pipeline denoises."""
    device = torch.device(device) if device is not None else next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0

    def encode(images: Tensor) -> Tensor:
        mean = vae.encode(images.to(device, dtype)).latent_dist.mean
        return ((mean - shift) * scaling).float()

    return encode


def vae_metadata(vae: Any, model: str) -> dict[str, Any]:
    """What :func:`~safedenoiser.pipelines.hook.negation_differences` checks: model id, VAE factors and fingerprint."""
    from .hook import vae_fingerprint

    return {"model": model, "vae_class": type(vae).__name__, "vae_scaling_factor": vae.config.scaling_factor,
            "vae_shift_factor": getattr(vae.config, "shift_factor", None),
            "vae_latent_channels": getattr(vae.config, "latent_channels", None), "vae_fingerprint": vae_fingerprint(vae)}


def load_vae(model: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """The VAE of a diffusers model folder or hub id (``vae`` subfolder), or of a folder that is a VAE."""
    from diffusers import AutoencoderKL

    from ..zoo.latent.pipeline import shipped_model_folder

    path = shipped_model_folder(model)
    subfolder = "vae" if not path.exists() or (path / "vae").is_dir() else None
    try:
        vae = AutoencoderKL.from_pretrained(str(path), subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"cannot load a VAE from {model!r}: {err}") from err
    return vae.to(device).eval()


def image_paths(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files of ``--images``: one folder (searched recursively) or a list of files. Anything missing is
    one line naming it (``no such folder: X`` / ``no such file: X``), before any model is loaded."""
    if isinstance(images, (str, Path)):
        images = [images]
    images = [Path(p) for p in images]
    if len(images) == 1 and not images[0].exists():
        kind = "file" if images[0].suffix.lower() in IMAGE_SUFFIXES else "folder"
        raise FileNotFoundError(f"no such {kind}: {images[0]}")
    if len(images) == 1 and images[0].is_dir():
        return list_images(images[0])
    missing = [p for p in images if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    folders = [p for p in images if p.is_dir()]
    if folders:
        raise ImageReadError(f"give one folder or a list of image files, not folders among files: {folders[0]}")
    return images


def shape_warnings(paths: Sequence[Path], size: int | tuple[int, int], limit: int = 3) -> list[str]:
    """Lines naming the images that resizing to ``size`` (H, W) stretches (aspect ratio off by more than
    :data:`ASPECT_TOLERANCE`) or enlarges more than 2x, with their sizes; read from the headers only."""
    height, width = (size, size) if isinstance(size, int) else size
    stretched, enlarged = [], []
    for path in paths:
        try:
            w, h = image_size(path)
        except ImageReadError:
            continue  # reported by name when read
        if max(w / h, width / height) / min(w / h, width / height) > ASPECT_TOLERANCE:
            stretched.append(f"{path.name} {w}x{h}")
        elif w * 2 < width or h * 2 < height:
            enlarged.append(f"{path.name} {w}x{h}")
    lines = []
    for names, what in ((stretched, f"have another aspect ratio than the model's {width}x{height} and are stretched"),
                        (enlarged, f"are less than half the model's {width}x{height} and are enlarged")):
        if names:
            more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
            lines.append(f"{len(names)} of {len(paths)} images {what}: {', '.join(names[:limit])}{more}")
    return lines


def build_from_folder(model: str | Path, images: str | Path | Sequence[str | Path], out: str | Path, *,
                      resolution: int | None = None, batch_size: int = 8, strict: bool = False, resume: bool = True,
                      device: str = "cpu", dtype: torch.dtype = torch.float32, store_dtype: torch.dtype | None = None,
                      progress: bool = True, vae: Any = None, background: float = DEFAULT_BACKGROUND,
                      role: str = "negation", log: Callable[[str], None] | None = None,
                      rank: int | None = None, world_size: int | None = None) -> BuildReport:
    """``safe-denoiser negation build``: encode a folder (or a list) of images with the model's VAE.

    Images are resized to ``resolution`` (default: the VAE's ``sample_size``) and must then all have that size;
    images that resizing stretches or strongly enlarges are named (with their sizes) through ``log`` before the
    encoding starts and in ``report.notes``. ``rank`` / ``world_size`` default to the ``RANK`` /
    ``WORLD_SIZE`` environment variables (``torchrun``, ``accelerate launch``).
    """
    from .generate import rank_and_world

    paths = image_paths(images)  # missing inputs and a bad output are named before any model is loaded
    _checked_output(out)
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    pixel = pixel_pipeline_config(model) if vae is None else None
    if pixel is not None:
        size, mode = _pixel_size_and_mode(pixel, resolution)
        encode, space, meta = (lambda images: images.float()), "pixels", pixel_metadata(model, pixel)
    else:
        vae = vae if vae is not None else load_vae(model, device, dtype)
        size, mode = int(resolution or vae.config.sample_size), _image_mode(int(vae.config.in_channels))
        encode, space, meta = vae_encoder(vae, device), "vae latents", vae_metadata(vae, str(model))
    notes = shape_warnings(paths, size) if rank == 0 else []
    for line in notes if log is not None else []:
        log(line)
    report = build_negation_set(paths, encode, out, batch_size=batch_size, resume=resume, strict=strict, size=size,
                                resize=True, mode=mode, space=space, metadata=meta, dtype=store_dtype, progress=progress,
                                background=background, role=role, rank=rank, world_size=world_size)
    report.notes = notes
    return report


def pixel_pipeline_config(model: str | Path) -> dict[str, Any] | None:
    """For a pipeline folder without a VAE whose UNet works on pixels (e.g. the shipped ``fashion-t2i``):
    ``{"pipeline", "sample_size", "channels"}``; None for anything else (then the VAE path applies)."""
    from ..zoo.latent.pipeline import shipped_model_folder

    path = shipped_model_folder(model)
    index, unet_config = path / "model_index.json", path / "unet" / "config.json"
    if not index.is_file() or not unet_config.is_file() or (path / "vae").exists():
        return None
    try:
        components = json.loads(index.read_text())
        config = json.loads(unet_config.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise NegationSetError(f"cannot read the pipeline config in {path}: {err}") from err
    if components.get("vae") not in (None, [None, None]):
        return None
    return {"pipeline": components.get("_class_name"), "sample_size": int(config["sample_size"]), "channels": int(config["in_channels"])}


def pixel_metadata(model: str | Path, pixel: dict[str, Any]) -> dict[str, Any]:
    """What the hook checks for a pixel-space set: the pipeline class, its image size and channels."""
    return {"model": str(model), "pixel_pipeline": pixel["pipeline"], "pixel_sample_size": pixel["sample_size"],
            "pixel_channels": pixel["channels"]}


def _pixel_size_and_mode(pixel: dict[str, Any], resolution: int | None) -> tuple[int, str]:
    """A pixel-space pipeline's set: images resized to its UNet's size, in [-1, 1], grey or RGB as its channels."""
    size = pixel["sample_size"]
    if resolution is not None and int(resolution) != size:
        raise NegationSetError(f"--resolution {resolution}: this pipeline works on pixels at {size}x{size} only")
    return size, _image_mode(pixel["channels"])


def _image_mode(channels: int) -> str:
    """Pillow mode of the images a model with ``channels`` input channels reads: grey (1) or RGB (3)."""
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise NegationSetError(f"models with {channels} image channels are not supported (1 or 3)")
    return mode
