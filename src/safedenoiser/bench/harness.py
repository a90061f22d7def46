"""The image benchmarks' harness: a setting (a method at one knob value), the measured row, the runner that samples
every setting on the same seeds, rejection sampling as a row, and the report (via :mod:`.report`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from .report import best_per_method, markdown_table, plot_methods, report_document
from ..results import pyplot, save_figure
from ..sampling import rejection_sample
from ..zoo.images.common import denoiser_evaluations, generate, save_grid, write_json, write_text
from ..zoo.images.evaluator import FD_LABEL


class Measurement(NamedTuple):
    """What a benchmark measures on a set of samples: the unsafe rate, FD, k-NN precision and recall, and extras
    (e.g. ``class_accuracy``)."""

    unsafe: float
    fd: float
    precision: float
    recall: float
    extra: dict[str, float]


@dataclass
class Setting:
    """One method at one knob value; ``make()`` builds its denoiser, ``cost`` multiplies the network
    evaluations per sampler step (2 for guidance that calls two denoisers)."""

    method: str
    knob: str
    value: float | None
    make: Callable[[], Callable[..., Tensor]]
    cost: float = 1.0


@dataclass
class Row:
    method: str
    knob: str
    value: float | None
    unsafe: float
    fd: float
    precision: float
    recall: float
    nfe_per_sample: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def best_rows(rows: list[Row], target: float) -> dict[str, dict[str, Any]]:
    """Per method: the lowest FD with unsafe <= target, else the lowest unsafe rate (then FD)."""
    best = best_per_method(rows, key=lambda r: r.method, meets=lambda r: r.unsafe <= target, cost=lambda r: r.fd,
                           risk=lambda r: r.unsafe)
    return {method: {**asdict(row), "meets_target": row.unsafe <= target} for method, row in best.items()}


def plot_tradeoff(rows: list[Row], path: Path, title: str, unsafe_label: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    plot_methods(ax, rows, lambda r: r.method, lambda r: 100 * r.unsafe, lambda r: r.fd)
    ax.set_xlabel(f"{unsafe_label} (% of samples)")
    ax.set_ylabel(FD_LABEL)
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def markdown_tables(rows: list[Row], best: dict[str, dict[str, Any]], unsafe_label: str,
                    extra_cols: Sequence[str]) -> tuple[str, str]:
    """(the best point per method, every setting) as markdown tables."""
    header = ["method", "knob", unsafe_label, FD_LABEL, "precision", "recall", "NFE / sample", *extra_cols]

    def cells(r: dict[str, Any]) -> list[str]:
        value = "" if r["value"] is None else f"{r['knob']}={r['value']:.3g}"
        return [r["method"], value, f"{100 * r['unsafe']:.1f}%", f"{r['fd']:.2f}", f"{r['precision']:.3f}",
                f"{r['recall']:.3f}", f"{r['nfe_per_sample']:.1f}", *(f"{r['extra'].get(c, float('nan')):.3f}" for c in extra_cols)]

    return (markdown_table(header, (cells(b) for b in best.values())),
            markdown_table(header, (cells(asdict(r)) for r in rows)))


@dataclass
class Benchmark:
    """Runs settings on one seed list and measures them with ``measure(samples, seeds) -> Measurement``."""

    name: str
    seeds: list[int]
    steps: int
    measure: Callable[[Tensor, Sequence[int]], Measurement]
    cond: Callable[[Sequence[int]], dict[str, Any]] | None = None
    progress: bool = True
    samples: dict[str, Tensor] = field(default_factory=dict)

    def run(self, setting: Setting, nfe: float | None = None) -> Row:
        start = time.time()
        images = generate(setting.make(), self.seeds, self.steps, cond=self.cond, progress=self.progress,
                          desc=f"{setting.method} {setting.value if setting.value is not None else ''}")
        unsafe, fd, precision, recall, extra = self.measure(images, self.seeds)
        key = f"{setting.method}:{setting.value}"
        self.samples[key] = images
        return Row(setting.method, setting.knob, setting.value, unsafe, fd, precision, recall,
                   nfe or setting.cost * denoiser_evaluations(self.steps), round(time.time() - start, 1), extra)


def write_report(out: Path, name: str, title: str, rows: list[Row], bench: Benchmark, target: float,
                 unsafe_label: str, config: dict[str, Any], extra_cols: Sequence[str] = (), notes: str = "") -> dict[str, Any]:
    best = best_rows(rows, target)
    out.mkdir(parents=True, exist_ok=True)
    plot_tradeoff(rows, out / "tradeoff.png", title, unsafe_label)
    grids = {}
    for method, row in best.items():
        images = bench.samples.get(f"{method}:{row['value']}")
        if images is not None:
            grids[method] = save_grid(images[:40], out / f"grid_{method}.png", nrow=20).name
    best_md, all_md = markdown_tables(rows, best, unsafe_label, extra_cols)
    result = {"benchmark": name, "title": title, "config": config, "target_unsafe": target, "fd_label": FD_LABEL,
              "rows": [asdict(r) for r in rows], "best": best, "grids": grids}
    write_json(out / "results.json", result)
    write_text(out / "results.md", report_document(
        title, notes, config, f"Best operating point per method (lowest FD with {unsafe_label} <= {100 * target:.0f}%, "
        f"else lowest {unsafe_label})", best_md, all_md,
        "Samples at each method's best operating point (first 40 seeds, same seeds for every method)", grids))
    return result


def rejection_row(bench: Benchmark, draw: Callable[[Sequence[int]], Tensor], is_unsafe: Callable[[Tensor], Tensor],
                  nfe: int, plain: Tensor) -> Row:
    """Rejection sampling: keep drawing plain samples (the first ones are reused) until len(seeds) are safe."""
    start = time.time()
    first = bench.seeds[0]
    cached = {s: plain[i] for i, s in enumerate(bench.seeds)}

    def cached_draw(seeds: Sequence[int]) -> Tensor:
        missing = [s for s in seeds if s not in cached]
        if missing:
            for s, image in zip(missing, draw(missing)):
                cached[s] = image
        return torch.stack([cached[s] for s in seeds])

    result = rejection_sample(cached_draw, is_unsafe, len(bench.seeds), first_seed=first, batch_size=len(bench.seeds),
                              max_attempts=20 * len(bench.seeds))
    unsafe, fd, precision, recall, extra = bench.measure(result.samples, result.seeds)
    bench.samples["rejection:None"] = result.samples
    # draws needed when sampling one seed at a time (the batches above may draw a few seeds past the last one kept)
    needed = result.attempts if result.exhausted else max(result.seeds) - first + 1
    extra = {**extra, "attempts": float(needed)}
    return Row("rejection", "-", None, unsafe, fd, precision, recall, nfe * needed / max(1, len(result.seeds)),
               round(time.time() - start, 1), extra)


