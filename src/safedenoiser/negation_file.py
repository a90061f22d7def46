"""The negation-set file format, in one place: a safetensors file whose one tensor ``data`` (N, *item_shape) is
described by string metadata (``format`` = :data:`FORMAT`, version, space, source, content hash, free-form
metadata), plus memory-mapped readers (safetensors / .npy / raw arrays) and a block writer for sets larger than memory.

A mapped tensor costs no memory up front: the kernels (:mod:`safedenoiser.kernels`) read it chunk by chunk,
and the operating system keeps as much of the file in its page cache as fits. Safetensors layout (the
format's specification): an 8-byte little-endian header length, a JSON header (tensor dtype, shape and byte
offsets, plus string metadata under ``__metadata__``, padded with spaces), then the raw row-major bytes.
:class:`~safedenoiser.negation.NegationSet` reads and writes these files; nothing here depends on it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import fileio
from .kernels import DEFAULT_CHUNK

FORMAT = "safedenoiser.negation"
FORMAT_VERSION = "1"
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
HEADER_RESERVE = 16384  # bytes of header space, so that metadata (the content hash) can be rewritten in place


def content_hash(data: Tensor) -> str:
    """sha256 over dtype, shape and the raw bytes of ``data`` (row-major, on CPU)."""
    digest = hashlib.sha256(f"{data.dtype}|{tuple(data.shape)}|".encode())
    flat = data.detach().reshape(data.shape[0], -1)
    for start in range(0, flat.shape[0], DEFAULT_CHUNK):
        block = flat[start : start + DEFAULT_CHUNK].contiguous().cpu()
        digest.update(block.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_header(content_hash: str, *, space: str, source: str, metadata: dict[str, Any]) -> dict[str, str]:
    """The string metadata of a negation safetensors file (format, version, space, source, hash, metadata)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "space": space,
        "source": source,
        "content_hash": content_hash,
        "metadata": json.dumps(metadata, sort_keys=True),
    }


class MappedFileError(ValueError):
    """A file that cannot be memory-mapped as a negation set (missing, truncated, wrong dtype or layout)."""


def read_set_file(path: str | Path, *, mmap: bool = False, device: str = "cpu", what: str = "negation set",
                  error: type[Exception] = MappedFileError) -> tuple[Tensor, dict[str, Any]]:
    """The one reader of the format: tensor ``data`` of a file written by :func:`file_header`'s writers, read into
    memory on ``device`` or memory-mapped (``mmap``, CPU), and its fields ``space``, ``source``, ``metadata`` (a dict)
    and ``content_hash`` (None where the file has none). A missing or corrupt file, or one of another format, raises
    ``error`` with a one-line message naming ``what`` it should be (a mapped one raises :class:`MappedFileError`)."""
    path = Path(path)
    if mmap:
        data, header = map_safetensors(path)
    else:
        tensors, header = fileio.read_safetensors(path, what=what, error=error, device=device, keys=["data"])
        if "data" not in tensors:
            raise error(f"{path} has no 'data' tensor; is it a {what} file?")
        data = tensors["data"]
    if header.get("format") != FORMAT:
        raise error(f"{path} is a safetensors file but not a safedenoiser {what}")
    fields = {"space": header.get("space", "data"), "source": header.get("source", ""),
              "metadata": json.loads(header.get("metadata", "{}")), "content_hash": header.get("content_hash")}
    return data, fields


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _map_bytes(path: Path, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    """A (shape) tensor of ``dtype`` over ``nbytes`` bytes of ``path`` from ``offset``, memory-mapped.

    The map is copy-on-write (numpy mode 'c': writing into the tensor never changes the file) where the
    operating system accepts it; Linux without overcommit refuses private maps larger than what it can
    commit (RAM + swap), and then the map is read-only (mode 'r': the file's pages are shared, never
    counted as the process's memory, and writing into the tensor is an error of the caller: it crashes).
    """
    size = path.stat().st_size
    if offset + nbytes > size:
        raise MappedFileError(f"{path} is truncated: needs {offset + nbytes} bytes, has {size}")
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=(nbytes,))
    except OSError as err:
        if err.errno != errno.ENOMEM:
            raise MappedFileError(f"cannot map {path}: {err}") from err
        raw = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(nbytes,))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(raw).view(dtype).reshape(shape)


def read_safetensors_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its data section starts."""
    path = Path(path)
    if not path.is_file():
        raise MappedFileError(f"file not found: {path}")
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise MappedFileError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100 << 20 or length + 8 > path.stat().st_size:
            raise MappedFileError(f"{path} is not a safetensors file (header length {length})")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MappedFileError(f"{path} has a corrupt safetensors header: {err}") from err
    return header, 8 + length


def map_safetensors(path: str | Path, name: str = "data") -> tuple[Tensor, dict[str, str]]:
    """Memory-map tensor ``name`` of a safetensors file; returns it and the file's string metadata."""
    path = Path(path)
    header, data_start = read_safetensors_header(path)
    if name not in header:
        raise MappedFileError(f"{path} has no tensor {name!r} (it has {sorted(k for k in header if k != '__metadata__')})")
    entry = header[name]
    if entry.get("dtype") not in SAFETENSORS_DTYPES:
        raise MappedFileError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')}; a negation set needs one of "
                              f"{sorted(SAFETENSORS_DTYPES)}")
    dtype = SAFETENSORS_DTYPES[entry["dtype"]]
    shape = tuple(int(s) for s in entry["shape"])
    begin, end = (int(v) for v in entry["data_offsets"])
    expected = int(np.prod(shape, dtype=np.int64)) * _itemsize(dtype)
    if end - begin != expected:
        raise MappedFileError(f"{path}: tensor {name!r} has {end - begin} bytes but shape {shape} needs {expected}")
    tensor = _map_bytes(path, data_start + begin, expected, dtype, shape)
    return tensor, dict(header.get("__metadata__") or {})


def map_array(path: str | Path, dtype: torch.dtype | None = None, shape: tuple[int, ...] | None = None,
              offset: int = 0) -> Tensor:
    """Memory-map a ``.npy`` file (dtype and shape from its header) or a raw row-major array file (``dtype``
    and ``shape`` given; one dimension of ``shape`` may be -1)."""
    path = Path(path)
    if not path.is_file():
        raise MappedFileError(f"file not found: {path}")
    if path.suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="c")
        except ValueError as err:
            raise MappedFileError(f"cannot map {path}: {err}") from err
        if array.dtype.kind != "f":
            raise MappedFileError(f"{path} holds {array.dtype}; a negation set needs floating point")
        if not array.flags.c_contiguous:
            raise MappedFileError(f"{path} is stored in Fortran order; save it in C (row-major) order")
        return torch.from_numpy(array)
    if dtype is None or shape is None:
        raise MappedFileError(f"{path} is a raw array: give its dtype and shape (or save it as .npy / .safetensors)")
    itemsize = _itemsize(dtype)
    shape = list(shape)
    if shape.count(-1) > 1:
        raise MappedFileError(f"at most one dimension of shape can be -1, got {tuple(shape)}")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64)) * itemsize
        available = path.stat().st_size - offset
        if known == 0 or available % known:
            raise MappedFileError(f"{path}: {available} bytes are not a whole number of rows of shape {tuple(shape)} {dtype}")
        shape[shape.index(-1)] = available // known
    nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
    return _map_bytes(path, offset, nbytes, dtype, tuple(shape))


class SafetensorsWriter:
    """Write one large tensor ``data`` (shape, dtype) into a safetensors file block by block, never holding it
    in memory; the metadata (with the content hash, known only at the end) is written by :meth:`close`.

    The header is padded with spaces to ``HEADER_RESERVE`` bytes so that it can be rewritten in place. An
    existing file of the same shape and dtype is reopened rather than truncated (``resume=True``), so an
    interrupted build can continue where it stopped; which rows are done is the caller's bookkeeping.
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: torch.dtype = torch.float32, resume: bool = False):
        if dtype not in DTYPE_CODES:
            raise MappedFileError(f"dtype must be one of {list(DTYPE_CODES)}, got {dtype}")
        if len(shape) < 2 or shape[0] < 1 or any(s < 1 for s in shape):
            raise MappedFileError(f"shape must be (N >= 1, *item_shape), got {tuple(shape)}")
        self.path, self.shape, self.dtype = Path(path), tuple(int(s) for s in shape), dtype
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * _itemsize(dtype)
        if resume and self.path.is_file():
            header, start = read_safetensors_header(self.path)
            entry = header.get("data", {})
            if entry.get("dtype") != DTYPE_CODES[dtype] or tuple(entry.get("shape", ())) != self.shape:
                raise MappedFileError(f"cannot resume {self.path}: it holds {entry.get('dtype')} {entry.get('shape')}, "
                                      f"not {DTYPE_CODES[dtype]} {list(self.shape)}")
            self.header_bytes = start - 8
        else:
            self.header_bytes = HEADER_RESERVE
            with open(self.path, "wb") as handle:
                handle.write(self._header({}))
                handle.truncate(8 + self.header_bytes + self.nbytes)
        self._raw = np.memmap(self.path, dtype=np.uint8, mode="r+", offset=8 + self.header_bytes, shape=(self.nbytes,))
        self.tensor = torch.from_numpy(self._raw).view(dtype).reshape(self.shape)

    def _header(self, metadata: dict[str, str]) -> bytes:
        entry = {"dtype": DTYPE_CODES[self.dtype], "shape": list(self.shape), "data_offsets": [0, self.nbytes]}
        text = json.dumps({"__metadata__": metadata, "data": entry}, separators=(",", ":")).encode()
        if len(text) > self.header_bytes:
            raise MappedFileError(f"metadata too large for the reserved header ({len(text)} > {self.header_bytes} bytes)")
        return struct.pack("<Q", self.header_bytes) + text + b" " * (self.header_bytes - len(text))

    def write(self, start: int, block: Tensor) -> None:
        """Write rows ``start : start + len(block)``."""
        if start < 0 or start + block.shape[0] > self.shape[0] or tuple(block.shape[1:]) != self.shape[1:]:
            raise MappedFileError(f"block of shape {tuple(block.shape)} at row {start} does not fit {self.shape}")
        self.tensor[start : start + block.shape[0]] = block.detach().to("cpu", self.dtype)

    def close(self, metadata: dict[str, str]) -> None:
        """Flush the data and write the final header with ``metadata`` (string values)."""
        self._raw.flush()
        del self.tensor, self._raw
        with open(self.path, "r+b") as handle:
            handle.write(self._header({k: str(v) for k, v in metadata.items()}))


class NegationFileWriter(SafetensorsWriter):
    """A :class:`SafetensorsWriter` whose :meth:`finish` writes a negation set header (space, source, content
    hash, metadata), so that the file opens with :meth:`~safedenoiser.negation.ItemSet.open` / :meth:`~safedenoiser.negation.ItemSet.load`."""

    def finish(self, *, space: str = "data", source: str = "", metadata: dict[str, Any] | None = None) -> None:
        """Hash the written data (one pass) and close the file with its negation-set header."""
        self._raw.flush()
        self.close(file_header(content_hash(self.tensor), space=space, source=source, metadata=dict(metadata or {})))
