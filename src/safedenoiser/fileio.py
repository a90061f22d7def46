"""Atomic file writes: write a temporary file in the target's folder, fsync it, give it the mode the umask
implies, then rename it over the target (``os.replace`` is atomic on POSIX), so a reader or a killed
process never sees a half-written file.

Temporary names carry the host name, the process id and a random suffix, so ranks on different hosts
sharing a filesystem never collide; they start with a dot and end in ``.tmp`` so that globs such as
``*.png`` or ``*.json`` never pick them up.

:func:`read_safetensors` is the matching reader: every safetensors file the package writes carries its kind in
a ``format`` tag of its metadata, and a file of another kind is refused with a message that names it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

TEMP_SUFFIX = ".tmp"


def _host() -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40] or "host"


def temp_path(path: str | Path) -> Path:
    """A fresh temporary name next to ``path``: ``.NAME.HOST.PID.RANDOM.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def default_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through (any writer: ``save_file``, ``torch.save``, PIL);
    on success it is fsynced, given the umask's mode and renamed onto ``path``; on failure it is removed."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder to write a whole folder ``path`` through; on success the previous folder is
    moved to ``NAME.old``, the new one renamed onto ``path`` and the old one removed (a kill leaves a whole
    folder at ``path`` or at ``NAME.old``, never a half-written one); on failure the temporary folder is removed."""
    import shutil

    path = Path(path)
    tmp = temp_path(path)
    old = path.with_name(path.name + ".old")
    tmp.mkdir()
    try:
        yield tmp
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            path.replace(old)
        tmp.replace(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Atomically replace ``path`` by ``data``."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """Atomically replace ``path`` by ``text`` (UTF-8), creating its folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_json(path: str | Path, data: Any, *, fsync: bool = True) -> Path:
    """Atomically replace ``path`` by ``data`` as indented JSON (two spaces, keys in insertion order, final newline)."""
    return write_text(path, json.dumps(data, indent=2) + "\n", fsync=fsync)


def write_with(path: str | Path, writer: Callable[[Path], Any], *, fsync: bool = True) -> Path:
    """Atomically replace ``path`` by what ``writer(tmp_path)`` writes."""
    with atomic_path(path, fsync=fsync) as tmp:
        writer(tmp)
    return Path(path)


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` made atomic and umask-honouring (safetensors creates files 0600)."""
    from safetensors.torch import save_file

    return write_with(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                                  metadata=metadata))


def read_safetensors(path: str | Path, fmt: str | None = None, *, what: str = "file",
                     error: type[Exception] = ValueError, device: str = "cpu",
                     keys: Iterable[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors (all, or those of ``keys`` that the file has) and the string metadata of a safetensors file.

    With ``fmt`` the metadata's ``format`` tag must equal it. A missing, unreadable or corrupt file, or one of
    another format, raises ``error`` with a one-line message naming ``what`` it should be and the path."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    if not os.access(path, os.R_OK):
        raise error(f"{what} is not readable (permission denied): {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            header = handle.metadata() or {}
            names = handle.keys() if keys is None else [k for k in keys if k in handle.keys()]
            tensors = {k: handle.get_tensor(k) for k in names}
    except Exception as err:  # safetensors raises its own types for files that are not safetensors
        raise error(f"cannot read {what} {path} (not a safetensors file?): {err}") from err
    if fmt is not None and header.get("format") != fmt:
        raise error(f"{path} is not a {fmt} {what} (format={header.get('format')!r}); "
                    "it was written by another tool or for another purpose")
    return tensors, header


def remove_stale_temps(folder: str | Path, name: str | None = None) -> int:
    """Remove this host's temporary files and folders (:func:`atomic_folder`'s) in ``folder`` whose writing process
    is gone (left by a kill); returns how many; with ``name``, only the temporaries of that file. Other hosts'
    temporaries are left alone (their process cannot be checked from here)."""
    import shutil

    folder = Path(folder)
    host = _host()
    removed = 0
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(f".{glob.escape(name) if name else '*'}.{host}.*{TEMP_SUFFIX}"):
        parts = tmp.name[: -len(TEMP_SUFFIX)].split(".")
        try:
            pid = int(parts[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(OSError):
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock (``fcntl.flock``) on ``path`` (created if missing) for the ``with`` body;
    a no-op where ``fcntl`` is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
