"""Atomic file writes: write a temporary file in the target's folder, fsync it, give it the mode the umask
implies, then rename it over the target (``os.replace`` is atomic on POSIX), so a reader or a killed
process never sees a half-written file.

Temporary names carry the host name, the process id and a random suffix, so ranks on different hosts
sharing a filesystem never collide; they start with a dot and end in ``.tmp`` so that globs such as
``*.png`` or ``*.json`` never pick them up.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

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


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Atomically replace ``path`` by ``data``."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """Atomically replace ``path`` by ``text`` (UTF-8)."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


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


def remove_stale_temps(folder: str | Path) -> int:
    """Remove this host's temporary files in ``folder`` whose writing process is gone (left by a kill);
    returns how many. Other hosts' temporaries are left alone (their process cannot be checked from here)."""
    folder = Path(folder)
    host = _host()
    removed = 0
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(f".*.{host}.*{TEMP_SUFFIX}"):
        parts = tmp.name[: -len(TEMP_SUFFIX)].split(".")
        try:
            pid = int(parts[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(OSError):
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
