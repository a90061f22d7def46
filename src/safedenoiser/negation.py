"""The sets of clean items, in the denoiser's space, that the methods compare samples with: the negation set (N
items that sampling must avoid) and the reference set (M items of allowed content, the conditional mode's), one base
:class:`ItemSet` for both; files in the format of :mod:`safedenoiser.negation_file`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import fileio
from .coverage import knn_coverage
from .kernels import DEFAULT_CHUNK, KernelMoments, compute_dtype, kernel_moments, squared_norms
from .negation_file import MappedFileError, content_hash, file_header, map_array, read_set_file

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11


class NegationSetError(ValueError):
    """A negation or reference set that is empty, non-finite, or does not match the samples it is used with (the
    errors of a reference set are :class:`ReferenceSetError`, a kind of this one)."""


class ReferenceSetError(NegationSetError):
    """A reference set that is empty, non-finite, of the wrong shape, or entirely covered by the negation set."""


class ItemSet:
    """N clean items ``data`` (N, *item_shape), with where they live and where they came from: the base of
    :class:`NegationSet` and :class:`ReferenceSet`.

    ``space`` names the space of the items (``"data"``, ``"pixels"``, ``"sd-vae latents"`` ...);
    ``metadata`` is free-form and travels with the safetensors file. Squared norms are cached for the
    streamed kernels (:mod:`safedenoiser.kernels`).

    Kernel options: the storage dtype is the dtype of ``data`` (float16 / bfloat16 halve the bytes read per
    call); ``compute_dtype`` (float32 or float64, default: float64 for float64 data or queries, else
    float32) is what the kernels accumulate in; ``chunk_size`` is the default rows per kernel step.
    ``data`` may be a memory-mapped tensor (:meth:`open`, :meth:`load` with ``mmap=True``); ``validate=False``
    skips the pass over all items that checks they are finite.

    A subclass names its ``kind`` (in every message), its ``error`` (the exception every check raises) and its
    ``role`` (None, or the value of ``metadata['role']`` that its items always carry).
    """

    kind = "item set"
    error: type[NegationSetError] = NegationSetError
    role: str | None = None

    def __init__(self, data: Tensor, *, space: str = "data", source: str = "", metadata: dict[str, Any] | None = None,
                 compute_dtype: torch.dtype | None = None, chunk_size: int | None = None, validate: bool = True):
        if not isinstance(data, Tensor):
            raise self.error(f"{self.kind} data must be a torch.Tensor, got {type(data).__name__}")
        if data.ndim < 2:
            raise self.error(f"{self.kind} data must have shape (N, *item_shape), got {tuple(data.shape)}")
        if data.shape[0] == 0:
            raise self.error(f"{self.kind} is empty: it needs at least one item")
        if data[0].numel() == 0:
            raise self.error(f"{self.kind} items are empty: shape {tuple(data.shape)} has a zero-sized item dimension")
        if not data.is_floating_point():
            raise self.error(f"{self.kind} data must be floating point, got {data.dtype}")
        if validate and not _all_finite(data):
            raise self.error(f"{self.kind} contains NaN or infinite values")
        if compute_dtype not in (None, torch.float32, torch.float64):
            raise self.error(f"compute_dtype must be torch.float32, torch.float64 or None, got {compute_dtype}")
        if chunk_size is not None and chunk_size < 1:
            raise self.error(f"chunk_size must be >= 1, got {chunk_size}")
        self.data = data
        self.space = space
        self.source = source
        self.metadata = dict(metadata or {}) if self.role is None else {**(metadata or {}), "role": self.role}
        self.compute_dtype = compute_dtype
        self.chunk_size = chunk_size
        self._sq_norms: dict[torch.dtype, Tensor] = {}
        self._hash: str | None = None

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, item_shape={self.item_shape}, dtype={self.dtype}, space={self.space!r})"

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

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Self:
        """A copy on ``device`` with storage ``dtype`` (kernels always accumulate in float32 or better)."""
        return type(self)(self.data.to(device=device, dtype=dtype), space=self.space, source=self.source,
                          metadata=self.metadata, compute_dtype=self.compute_dtype, chunk_size=self.chunk_size)

    def check_compatible(self, x: Tensor, name: str = "samples") -> None:
        """Raise a clear error unless ``x`` is a float batch (B, *item_shape) this set can be compared with."""
        if not isinstance(x, Tensor):
            raise self.error(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.item_shape:
            raise self.error(
                f"{name} have item shape {tuple(x.shape[1:])} but the {self.kind} ({self.space}) has item shape {self.item_shape}"
            )
        if not x.is_floating_point():
            raise self.error(f"{name} must be floating point, got {x.dtype}")
        if x.device != self.device:
            raise self.error(f"{name} are on {x.device} but the {self.kind} is on {self.device}; use {type(self).__name__}.to()")

    def moments(self, x: Tensor, bandwidth: Tensor | float, **kwargs: Any) -> KernelMoments:
        """Kernel moments of this set at flattened queries ``x`` (B, D); see :func:`kernel_moments`.

        ``dtype`` and ``chunk_size`` default to this set's ``compute_dtype`` and ``chunk_size``."""
        if x.device != self.device:
            raise self.error(f"queries are on {x.device} but the {self.kind} is on {self.device}; move it with "
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
             **options: Any) -> Self:
        """Read a file written by :meth:`save`; with ``verify`` the content hash is checked (one pass over the data).

        ``mmap=True`` maps the file instead of reading it (CPU only; see :meth:`open`). ``options``
        (``compute_dtype``, ``chunk_size``) are passed to the constructor."""
        path = Path(path)
        if mmap:
            if torch.device(device).type != "cpu":
                raise cls.error(f"a memory-mapped {cls.kind} lives on the CPU, not {device}; stream it to the "
                                "accelerator through the kernels or load it without mmap")
            return cls.open(path, verify=verify, **options)
        data, fields = read_set_file(path, device=str(device), what=cls.kind, error=cls.error)
        return cls._from_file(path, data, fields, verify, {"validate": True, **options})

    @classmethod
    def _from_file(cls, path: Path, data: Tensor, fields: dict[str, Any], verify: bool, options: dict[str, Any]) -> Self:
        """The set of a file's ``data`` and ``fields`` (:func:`~safedenoiser.negation_file.read_set_file`); with
        ``verify`` the content hash recorded in the file must match."""
        loaded = cls(data, space=fields["space"], source=fields["source"], metadata=fields["metadata"],
                     **{"validate": verify, **options})
        if verify and fields["content_hash"] not in (None, loaded.content_hash):
            raise cls.error(f"{path}: content hash mismatch (file corrupted or edited)")
        return loaded

    @classmethod
    def open(cls, path: str | Path, *, dtype: torch.dtype | None = None, shape: tuple[int, ...] | None = None,
             offset: int = 0, verify: bool = True, space: str = "data", source: str = "", **options: Any) -> Self:
        """A memory-mapped set: nothing is read until a kernel streams it.

        ``path`` is a negation safetensors file (:meth:`save`, :func:`~safedenoiser.scale.NegationFileWriter`),
        a ``.npy`` array, or a raw row-major array (give ``dtype``, ``shape`` and optionally a byte ``offset``).
        ``verify`` checks the content hash (safetensors) and finiteness: one pass over the file; pass
        ``verify=False`` for sets much larger than memory.
        """
        path = Path(path)
        try:
            if path.suffix == ".safetensors":
                data, fields = read_set_file(path, mmap=True, what=cls.kind, error=cls.error)
                return cls._from_file(path, data, fields, verify, options)
            data = map_array(path, dtype=dtype, shape=shape, offset=offset)
        except MappedFileError as err:
            raise cls.error(str(err)) from err
        return cls(data, space=space, source=source or str(path), validate=verify, **options)


class NegationSet(ItemSet):
    """N clean items ``data`` (N, *item_shape) to negate: the samples must stay away from them (:class:`ItemSet`
    for the options). Errors are :class:`NegationSetError`."""

    kind = "negation set"


class ReferenceSet(ItemSet):
    """M clean items of *allowed* content, shared by every condition, encoded exactly like the negation set
    (same space, item shape): the conditional mode's (:class:`~safedenoiser.methods.conditional.ConditionalCorrection`).
    Saved / loaded as a negation-format file with ``metadata['role'] = 'reference'``; errors are
    :class:`ReferenceSetError`.

    Build it from real allowed images (recommended) or from model samples with :meth:`from_samples`, which drops
    the samples the negation set covers.
    """

    kind = "reference set"
    error = ReferenceSetError
    role = "reference"

    def covered_by(self, negation: NegationSet, neighbours: int = 20) -> Tensor:
        """(M,) bool: items the negation set covers, by the k-nearest-neighbour share rule of :mod:`safedenoiser.coverage`
        (negation items make up >= N / (2 (N + M)) of an item's ``neighbours`` nearest in negation + rest of the set);
        a set of one item is covered where it equals a negation item."""
        if self.item_shape != negation.item_shape:
            raise ReferenceSetError(f"reference set has item shape {self.item_shape} but the negation set has "
                                    f"{negation.item_shape}; encode both the same way")
        if len(self) < 2:
            return (torch.cdist(self.flat.double(), negation.flat.double()).min(1).values == 0)
        return knn_coverage(self.flat, negation, neighbours)[0]

    def check_against(self, negation: NegationSet) -> None:
        """Raise :class:`ReferenceSetError` unless item shapes match and some items are not covered by the negation set."""
        if bool(self.covered_by(negation).all()):
            raise ReferenceSetError("the reference set is entirely covered by the negation set: it holds no allowed "
                                    "content to substitute (give images of allowed content)")

    @classmethod
    def from_samples(cls, samples: Tensor, negation: NegationSet, **kwargs: Any) -> ReferenceSet:
        """Model samples (e.g. under the null condition) minus those the negation set covers."""
        ref = cls(samples, **kwargs)
        covered = ref.covered_by(negation)
        if bool(covered.all()):
            raise ReferenceSetError("every sample is covered by the negation set: nothing is left as reference")
        meta = {**ref.metadata, "dropped_covered": int(covered.sum()), "samples": len(ref)}
        return cls(samples[~covered], space=ref.space, source=ref.source, metadata=meta)


def _all_finite(data: Tensor) -> bool:
    flat = data.reshape(data.shape[0], -1)
    return all(bool(torch.isfinite(flat[s : s + DEFAULT_CHUNK]).all()) for s in range(0, flat.shape[0], DEFAULT_CHUNK))
