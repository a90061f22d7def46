"""Build a negation set from image files: encode in batches, resumable, every unreadable file named.

The generic builder :func:`build_negation_set` takes any ``encode_fn(images) -> items`` (images (B, C, H, W)
in [-1, 1]); :func:`vae_encoder` gives the diffusers one, ``(latent_dist.mean - shift_factor) * scaling_factor``
(the latents a pipeline denoises). Progress is written batch by batch as atomic part files next to the output
(``OUT.parts/``), so a killed build resumes where it stopped; the parts are removed once the set is saved.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import fileio
from ..imageio import ImageReadError, iter_image_batches, list_images
from ..negation import NegationSet, NegationSetError

#: Above this many items the per-image hashes go to a JSONL manifest beside the set (safetensors headers are
#: limited to 100 MB); the metadata then records the manifest's name and sha256.
INLINE_HASH_LIMIT = 50_000


@dataclass
class BuildReport:
    path: Path
    count: int  # items in the set
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable file -> reason
    resumed_batches: int = 0  # batches taken from an interrupted run


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
                       progress: bool = True) -> BuildReport:
    """Encode the images at ``paths`` in batches with ``encode_fn`` into a :class:`NegationSet` saved at ``out_path``.

    Unreadable or wrongly sized files are skipped and reported by name in the report and the metadata
    (``skipped``), or, with ``strict``, refused with :class:`~safedenoiser.imageio.ImageReadError`. With
    ``resume`` the finished batches of an interrupted run with the same inputs are reused. The metadata holds
    ``metadata`` plus the resolution, item shape, the per-image sha256 and the skipped files.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ImageReadError("no images given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.is_dir():
        raise ValueError(f"output {out_path} is a folder; give a .safetensors file name")
    parts_dir = out_path.with_name(out_path.name + ".parts")
    options = json.loads(json.dumps({"paths": [str(p) for p in paths], "batch_size": batch_size, "size": size,
                                     "resize": resize, "mode": mode, "metadata": metadata or {},
                                     "dtype": str(dtype)}, sort_keys=True, default=str))
    signature = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
    if parts_dir.exists() and not resume:
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(exist_ok=True)
    fileio.remove_stale_temps(parts_dir)
    fileio.remove_stale_temps(out_path.parent, out_path.name)  # a kill while the output itself was written
    try:
        report = _encode_parts(paths, encode_fn, out_path, parts_dir, options, signature, batch_size=batch_size,
                               strict=strict, size=size, resize=resize, mode=mode, dtype=dtype, progress=progress)
    except Exception:
        if not any(parts_dir.glob("part-*.safetensors")):
            shutil.rmtree(parts_dir, ignore_errors=True)  # nothing to resume: leave no empty .parts folder behind
        raise
    return _assemble(paths, out_path, parts_dir, report, batch_size=batch_size, size=size, space=space, metadata=metadata)


def _stale_options(parts_dir: Path, stored: dict[str, Any], options: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(stored) | set(options)) if stored.get(k) != options.get(k)]
    return (f"{parts_dir} holds the parts of an interrupted build with other {', '.join(keys) or 'options'}; "
            "rerun with --no-resume (library: resume=False) to discard them, or delete the folder")


def _encode_parts(paths: list[Path], encode_fn: Callable[[Tensor], Tensor], out_path: Path, parts_dir: Path,
                  options: dict[str, Any], signature: str, *, batch_size: int, strict: bool, size: Any, resize: bool,
                  mode: str, dtype: torch.dtype | None, progress: bool) -> BuildReport:
    """Encode every batch that has no valid part file yet; a part is valid when it has this build's options and
    its images' sizes and modification times are unchanged (else it is encoded again)."""
    starts = list(range(0, len(paths), batch_size))
    report = BuildReport(out_path, 0)
    on_error = "raise" if strict else "skip"
    bar = tqdm(total=len(paths), desc="encoding negation images", unit="img", disable=not progress)
    for number, start in enumerate(starts):
        part = parts_dir / f"part-{number:07d}.safetensors"
        chunk = paths[start : start + batch_size]
        if part.exists():
            try:
                _, info = _read_part(part)
            except ValueError as err:
                raise NegationSetError(f"{err}; delete {parts_dir} to restart") from err
            if info.get("signature") != signature:
                raise NegationSetError(_stale_options(parts_dir, info.get("options", {}), options))
            if info.get("stamps") == file_stamps(chunk):
                report.resumed_batches += 1
                bar.update(len(chunk))
                continue
        stamps = file_stamps(chunk)
        batch = next(iter_image_batches(chunk, len(chunk), size=size, mode=mode, resize=resize, on_error=on_error))
        info = {"signature": signature, "options": options, "stamps": stamps, "names": [str(p) for p in batch.paths],
                "hashes": [file_sha256(p) for p in batch.paths], "skipped": batch.skipped}
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
    return report


def _assemble(paths: list[Path], out_path: Path, parts_dir: Path, report: BuildReport, *, batch_size: int, size: Any,
              space: str, metadata: dict[str, Any] | None) -> BuildReport:
    """Concatenate the part files into the negation set at ``out_path`` and remove them."""
    datas, names, hashes = [], [], []
    for number in range(-(-len(paths) // batch_size)):
        data, info = _read_part(parts_dir / f"part-{number:07d}.safetensors")
        if data is not None:
            datas.append(data)
        names += info["names"]
        hashes += info["hashes"]
        report.skipped.update(info["skipped"])
    if not datas:
        shutil.rmtree(parts_dir, ignore_errors=True)
        raise ImageReadError(f"none of the {len(paths)} images could be read: " +
                             "; ".join(f"{k}: {v}" for k, v in list(report.skipped.items())[:5]))
    data = torch.cat(datas)
    meta = dict(metadata or {})
    height, width = (size, size) if isinstance(size, int) else (size or (None, None))
    meta.update({"resolution": [height, width] if height else None, "item_shape": list(data.shape[1:]),
                 "count": int(data.shape[0]), "skipped": report.skipped})
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
    report.count = int(data.shape[0])
    return report


def _common_root(names: list[str]) -> Path:
    import os

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

    path = Path(model)
    subfolder = "vae" if not path.exists() or (path / "vae").is_dir() else None
    try:
        vae = AutoencoderKL.from_pretrained(str(model), subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"cannot load a VAE from {model!r}: {err}") from err
    return vae.to(device).eval()


def build_from_folder(model: str | Path, images: str | Path | Sequence[str | Path], out: str | Path, *,
                      resolution: int | None = None, batch_size: int = 8, strict: bool = False, resume: bool = True,
                      device: str = "cpu", dtype: torch.dtype = torch.float32, store_dtype: torch.dtype | None = None,
                      progress: bool = True, vae: Any = None) -> BuildReport:
    """``safe-denoiser negation build``: encode a folder (or a list) of images with the model's VAE.

    Images are resized to ``resolution`` (default: the VAE's ``sample_size``) and must then all have that size.
    """
    paths = list_images(images) if isinstance(images, (str, Path)) else [Path(p) for p in images]
    if vae is None:
        pixel = pixel_pipeline_config(model)
        if pixel is not None:
            return _build_pixel_set(model, pixel, paths, out, resolution=resolution, batch_size=batch_size,
                                    strict=strict, resume=resume, store_dtype=store_dtype, progress=progress)
    vae = vae if vae is not None else load_vae(model, device, dtype)
    resolution = int(resolution or vae.config.sample_size)
    meta = vae_metadata(vae, str(model))
    return build_negation_set(paths, vae_encoder(vae, device), out, batch_size=batch_size, resume=resume, strict=strict,
                              size=resolution, resize=True, space="vae latents", metadata=meta, dtype=store_dtype,
                              progress=progress)


def pixel_pipeline_config(model: str | Path) -> dict[str, Any] | None:
    """For a pipeline folder without a VAE whose UNet works on pixels (e.g. the shipped ``fashion-t2i``):
    ``{"pipeline", "sample_size", "channels"}``; None for anything else (then the VAE path applies)."""
    from ..t2i.pipeline import SHIPPED_NAME, shipped_pipeline_path

    path = shipped_pipeline_path() if str(model) == SHIPPED_NAME else Path(model)
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


def _build_pixel_set(model: str | Path, pixel: dict[str, Any], paths: list[Path], out: str | Path, *,
                     resolution: int | None, batch_size: int, strict: bool, resume: bool,
                     store_dtype: torch.dtype | None, progress: bool) -> BuildReport:
    """The identity "encoder" of a pixel-space pipeline: images resized to its UNet's size, in [-1, 1], grey or RGB
    as its UNet's channels."""
    size = pixel["sample_size"]
    if resolution is not None and int(resolution) != size:
        raise NegationSetError(f"--resolution {resolution}: this pipeline works on pixels at {size}x{size} only")
    mode = {1: "L", 3: "RGB"}.get(pixel["channels"])
    if mode is None:
        raise NegationSetError(f"pixel-space pipelines with {pixel['channels']} channels are not supported (1 or 3)")
    return build_negation_set(paths, lambda images: images.float(), out, batch_size=batch_size, resume=resume,
                              strict=strict, size=size, resize=True, mode=mode, space="pixels",
                              metadata=pixel_metadata(model, pixel), dtype=store_dtype, progress=progress)
