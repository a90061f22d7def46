"""Benchmark bookkeeping: atomic writes and a resumable log of finished runs (one JSON line per run)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from . import fileio


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_bytes(path, data.encode() if isinstance(data, str) else data)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, for the benchmarks' figures; matplotlib is an optional
    dependency (the ``bench`` extra), so a missing one is named with its install command."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("figures need matplotlib, an optional dependency: pip install 'safedenoiser[bench]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically (PNG unless the suffix says otherwise)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    write_atomic(path, buffer.getvalue())


class RunLog:
    """Finished runs keyed by a string; ``run(key, fn)`` computes and appends only what is not logged yet,
    so an interrupted benchmark resumes where it stopped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption is recomputed
                self.records[record["key"]] = record

    def run(self, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if key not in self.records:
            record = {"key": key, **fn()}
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self.records[key] = record
        return self.records[key]
