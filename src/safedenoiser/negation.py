"""The negation set: N clean examples, in the denoiser's space, that sampling must avoid."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import fileio
from .kernels import DEFAULT_CHUNK, KernelMoments, compute_dtype, kernel_moments, squared_norms
from .negation_file import FORMAT, MappedFileError, content_hash, file_header, map_array, map_safetensors


class NegationSetError(ValueError):
    """A negation set that is empty, non-finite, or does not match the samples it is used with."""


class NegationSet:
    """N clean items ``data`` (N, *item_shape) to negate, with where they live and where they came from.

    ``space`` names the space of the items (``"data"``, ``"pixels"``, ``"sd-vae latents"`` ...);
    ``metadata`` is free-form and travels with the safetensors file. Squared norms are cached for the
    streamed kernels (:mod:`safedenoiser.kernels`).

    Kernel options: the storage dtype is the dtype of ``data`` (float16 / bfloat16 halve the bytes read per
    call); ``compute_dtype`` (float32 or float64, default: float64 for float64 data or queries, else
    float32) is what the kernels accumulate in; ``chunk_size`` is the default rows per kernel step.
    ``data`` may be a memory-mapped tensor (:meth:`open`, :meth:`load` with ``mmap=True``); ``validate=False``
    skips the pass over all items that checks they are finite.

    ``kind`` names the set in every message (subclasses such as the conditional mode's reference set set their own).
    """

    kind = "negation set"

    def __init__(self, data: Tensor, *, space: str = "data", source: str = "", metadata: dict[str, Any] | None = None,
                 compute_dtype: torch.dtype | None = None, chunk_size: int | None = None, validate: bool = True):
        if not isinstance(data, Tensor):
            raise NegationSetError(f"{self.kind} data must be a torch.Tensor, got {type(data).__name__}")
        if data.ndim < 2:
            raise NegationSetError(f"{self.kind} data must have shape (N, *item_shape), got {tuple(data.shape)}")
        if data.shape[0] == 0:
            raise NegationSetError(f"{self.kind} is empty: it needs at least one item")
        if data[0].numel() == 0:
            raise NegationSetError(f"{self.kind} items are empty: shape {tuple(data.shape)} has a zero-sized item dimension")
        if not data.is_floating_point():
            raise NegationSetError(f"{self.kind} data must be floating point, got {data.dtype}")
        if validate and not _all_finite(data):
            raise NegationSetError(f"{self.kind} contains NaN or infinite values")
        if compute_dtype not in (None, torch.float32, torch.float64):
            raise NegationSetError(f"compute_dtype must be torch.float32, torch.float64 or None, got {compute_dtype}")
        if chunk_size is not None and chunk_size < 1:
            raise NegationSetError(f"chunk_size must be >= 1, got {chunk_size}")
        self.data = data
        self.space = space
        self.source = source
        self.metadata = dict(metadata or {})
        self.compute_dtype = compute_dtype
        self.chunk_size = chunk_size
        self._sq_norms: dict[torch.dtype, Tensor] = {}
        self._hash: str | None = None

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        return f"NegationSet(n={len(self)}, item_shape={self.item_shape}, dtype={self.dtype}, space={self.space!r})"

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def dim(self) -> int:
        return math.prod(self.item_shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def flat(self) -> Tensor:
        """The items as (N, D)."""
        return self.data.reshape(len(self), -1)

    @property
    def sq_norms(self) -> Tensor:
        """Cached |x_n|^2 (N,), accumulated in ``compute_dtype`` (default float32, float64 for float64 data)."""
        return self.squared_norms(self.compute_dtype or compute_dtype(self.dtype))

    def squared_norms(self, dtype: torch.dtype) -> Tensor:
        """Cached |x_n|^2 (N,) accumulated in ``dtype`` (one pass over the set on first use)."""
        if dtype not in self._sq_norms:
            self._sq_norms[dtype] = squared_norms(self.flat, dtype)
        return self._sq_norms[dtype]

    @property
    def content_hash(self) -> str:
        if self._hash is None:
            self._hash = content_hash(self.data)
        return self._hash

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> NegationSet:
        """A copy on ``device`` with storage ``dtype`` (kernels always accumulate in float32 or better)."""
        return NegationSet(self.data.to(device=device, dtype=dtype), space=self.space, source=self.source,
                           metadata=self.metadata, compute_dtype=self.compute_dtype, chunk_size=self.chunk_size)

    def check_compatible(self, x: Tensor, name: str = "samples") -> None:
        """Raise a clear error unless ``x`` is a float batch (B, *item_shape) this set can be compared with."""
        if not isinstance(x, Tensor):
            raise NegationSetError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.item_shape:
            raise NegationSetError(
                f"{name} have item shape {tuple(x.shape[1:])} but the {self.kind} ({self.space}) has item shape {self.item_shape}"
            )
        if not x.is_floating_point():
            raise NegationSetError(f"{name} must be floating point, got {x.dtype}")
        if x.device != self.device:
            raise NegationSetError(f"{name} are on {x.device} but the {self.kind} is on {self.device}; use {type(self).__name__}.to()")

    def moments(self, x: Tensor, bandwidth: Tensor | float, **kwargs: Any) -> KernelMoments:
        """Kernel moments of this set at flattened queries ``x`` (B, D); see :func:`kernel_moments`.

        ``dtype`` and ``chunk_size`` default to this set's ``compute_dtype`` and ``chunk_size``."""
        if x.device != self.device:
            raise NegationSetError(f"queries are on {x.device} but the {self.kind} is on {self.device}; move it with "
                                   f".to({str(x.device)!r})")
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = self.compute_dtype or compute_dtype(x.dtype, self.dtype)
        if kwargs.get("chunk_size") is None:
            kwargs["chunk_size"] = self.chunk_size
        return kernel_moments(x, self.flat, bandwidth, point_sq_norms=self.squared_norms(kwargs["dtype"]), **kwargs)

    def save(self, path: str | Path) -> None:
        """Write a safetensors file (tensor ``data``) with space, source, hash and metadata in its header."""
        header = file_header(self.content_hash, space=self.space, source=self.source, metadata=self.metadata)
        fileio.save_safetensors({"data": self.data.detach().cpu()}, path, metadata=header)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", verify: bool = True, mmap: bool = False,
             **options: Any) -> NegationSet:
        """Read a file written by :meth:`save`; with ``verify`` the content hash is checked (one pass over the data).

        ``mmap=True`` maps the file instead of reading it (CPU only; see :meth:`open`). ``options``
        (``compute_dtype``, ``chunk_size``) are passed to the constructor."""
        path = Path(path)
        if mmap:
            if torch.device(device).type != "cpu":
                raise NegationSetError(f"a memory-mapped {cls.kind} lives on the CPU, not {device}; stream it to the "
                                       "accelerator through the kernels or load it without mmap")
            return cls.open(path, verify=verify, **options)
        tensors, header = fileio.read_safetensors(path, what=cls.kind, error=NegationSetError, device=str(device),
                                                  keys=["data"])
        if "data" not in tensors:
            raise NegationSetError(f"{path} has no 'data' tensor; is it a {cls.kind} file?")
        return cls._from_header(path, tensors["data"], header, verify, {"validate": True, **options})

    @classmethod
    def _from_header(cls, path: Path, data: Tensor, header: dict[str, str], verify: bool, options: dict[str, Any]) -> NegationSet:
        if header.get("format") != FORMAT:
            raise NegationSetError(f"{path} is a safetensors file but not a safedenoiser {cls.kind}")
        loaded = cls(data, space=header.get("space", "data"), source=header.get("source", ""),
                     metadata=json.loads(header.get("metadata", "{}")), **{"validate": verify, **options})
        if verify and header.get("content_hash") not in (None, loaded.content_hash):
            raise NegationSetError(f"{path}: content hash mismatch (file corrupted or edited)")
        return loaded

    @classmethod
    def open(cls, path: str | Path, *, dtype: torch.dtype | None = None, shape: tuple[int, ...] | None = None,
             offset: int = 0, verify: bool = True, space: str = "data", source: str = "", **options: Any) -> NegationSet:
        """A memory-mapped negation set: nothing is read until a kernel streams it.

        ``path`` is a negation safetensors file (:meth:`save`, :func:`~safedenoiser.scale.NegationFileWriter`),
        a ``.npy`` array, or a raw row-major array (give ``dtype``, ``shape`` and optionally a byte ``offset``).
        ``verify`` checks the content hash (safetensors) and finiteness: one pass over the file; pass
        ``verify=False`` for sets much larger than memory.
        """
        path = Path(path)
        try:
            if path.suffix == ".safetensors":
                data, header = map_safetensors(path)
                return cls._from_header(path, data, header, verify, options)
            data = map_array(path, dtype=dtype, shape=shape, offset=offset)
        except MappedFileError as err:
            raise NegationSetError(str(err)) from err
        return cls(data, space=space, source=source or str(path), validate=verify, **options)


def _all_finite(data: Tensor) -> bool:
    flat = data.reshape(data.shape[0], -1)
    return all(bool(torch.isfinite(flat[s : s + DEFAULT_CHUNK]).all()) for s in range(0, flat.shape[0], DEFAULT_CHUNK))
