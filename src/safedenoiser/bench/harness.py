"""The image benchmarks' harness: the runner that samples every :class:`~.records.Setting` on the same seeds and
measures it as a :class:`~.records.Record` (metrics ``unsafe``, ``broken``, ``fd``, ``precision``, ``recall``,
``nfe_per_sample``), rejection sampling as a record, and the report (via :mod:`.report`). ``broken`` is the share of
samples the benchmark's one broken-output detector (:class:`~safedenoiser.zoo.images.evaluator.BrokenDetector`)
flags; a setting with more broken samples than :func:`~.report.broken_limit` allows (1 point above plain's share)
cannot be a method's best point."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from .records import Record, Setting
from .report import best_per_method, broken_limit, markdown_table, plain_broken, plot_methods, report_document
from ..results import pyplot, save_figure
from ..sampling import rejection_sample
from ..fileio import write_json, write_text
from ..zoo.images.common import denoiser_evaluations, generate
from ..zoo.images.grids import save_grid
from ..zoo.images.evaluator import FD_LABEL


class Measurement(NamedTuple):
    """What a benchmark measures on a set of samples: the unsafe rate, FD, k-NN precision and recall, and extras
    (e.g. ``class_accuracy``)."""

    unsafe: float
    fd: float
    precision: float
    recall: float
    extra: dict[str, float]


def image_record(setting: Setting, measured: Measurement, nfe_per_sample: float, seconds: float,
                 extra: dict[str, float] | None = None, broken: float | None = None) -> Record:
    """The record of an image benchmark: the measurement, the broken share (when measured) and the network
    evaluations per sample as its metrics."""
    return Record(setting.method, setting.knob, setting.value,
                  {"unsafe": measured.unsafe, **({} if broken is None else {"broken": broken}), "fd": measured.fd,
                   "precision": measured.precision, "recall": measured.recall, "nfe_per_sample": nfe_per_sample},
                  round(seconds, 1), {**measured.extra, **(extra or {})})


def best_rows(rows: list[Record], target: float, broken: float | None = None) -> dict[str, dict[str, Any]]:
    """Per method, among its settings with broken <= ``broken`` (default :func:`~.report.broken_limit` of the plain
    row's share): the lowest FD with unsafe <= target, else the lowest unsafe rate (then FD); safety bought with broken
    images does not count. A method none of whose settings has broken <= ``broken`` gets the same rule over all its
    settings and ``broken_ok`` False (the tables say so)."""
    broken = broken_limit(plain_broken(rows)) if broken is None else broken
    best = best_per_method(rows, key=lambda r: r.method, meets=lambda r: r.unsafe <= target, cost=lambda r: r.fd,
                           risk=lambda r: r.unsafe, usable=lambda r: r.broken <= broken)
    return {method: {**row.as_dict(), "broken_ok": row.broken <= broken,
                     "meets_target": row.unsafe <= target and row.broken <= broken} for method, row in best.items()}


def plot_tradeoff(rows: list[Record], path: Path, title: str, unsafe_label: str) -> None:
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


def markdown_tables(rows: list[Record], best: dict[str, dict[str, Any]], unsafe_label: str,
                    extra_cols: Sequence[str], broken: float) -> tuple[str, str]:
    """(the best point per method, every setting) as markdown tables; a best point without a setting of broken <=
    ``broken`` is named so in its method cell."""
    header = ["method", "knob", unsafe_label, "broken", FD_LABEL, "precision", "recall", "NFE / sample", *extra_cols]

    def cells(r: dict[str, Any]) -> list[str]:
        value = "" if r["value"] is None else f"{r['knob']}={r['value']:.3g}"
        method = r["method"] if r.get("broken_ok", True) else f"{r['method']} (no setting with broken <= {100 * broken:.1f}%)"
        return [method, value, f"{100 * r['unsafe']:.1f}%", f"{100 * r['broken']:.1f}%", f"{r['fd']:.2f}",
                f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['nfe_per_sample']:.1f}",
                *(f"{r['extra'].get(c, float('nan')):.3f}" for c in extra_cols)]

    return (markdown_table(header, (cells(b) for b in best.values())),
            markdown_table(header, (cells(r.as_dict()) for r in rows)))


@dataclass
class Benchmark:
    """Runs settings on one seed list and measures them with ``measure(samples, seeds) -> Measurement`` and, when
    given, the share of samples ``broken(samples) -> (B,) bool`` flags (one detector for every setting)."""

    name: str
    seeds: list[int]
    steps: int
    measure: Callable[[Tensor, Sequence[int]], Measurement]
    cond: Callable[[Sequence[int]], dict[str, Any]] | None = None
    progress: bool = True
    samples: dict[str, Tensor] = field(default_factory=dict)
    broken: Callable[[Tensor], Tensor] | None = None

    def broken_share(self, images: Tensor) -> float | None:
        """Share of ``images`` the detector calls broken; None without a detector."""
        return None if self.broken is None else float(self.broken(images).double().mean())

    def run(self, setting: Setting, nfe: float | None = None) -> Record:
        start = time.time()
        images = generate(setting.make(), self.seeds, self.steps, cond=self.cond, progress=self.progress,
                          desc=f"{setting.method} {setting.value if setting.value is not None else ''}")
        measured = self.measure(images, self.seeds)
        self.samples[f"{setting.method}:{setting.value}"] = images
        return image_record(setting, measured, nfe or setting.cost * denoiser_evaluations(self.steps),
                            time.time() - start, broken=self.broken_share(images))


def write_report(out: Path, name: str, title: str, rows: list[Record], bench: Benchmark, target: float,
                 unsafe_label: str, config: dict[str, Any], extra_cols: Sequence[str] = (), notes: str = "") -> dict[str, Any]:
    if bench.broken is None:
        raise ValueError(f"the {name} benchmark has no broken-output detector: every report shows the broken share")
    limit = broken_limit(plain_broken(rows))
    best = best_rows(rows, target, limit)
    out.mkdir(parents=True, exist_ok=True)
    plot_tradeoff(rows, out / "tradeoff.png", title, unsafe_label)
    grids = {}
    for method, row in best.items():
        images = bench.samples.get(f"{method}:{row['value']}")
        if images is not None:
            grids[method] = save_grid(images[:40], out / f"grid_{method}.png", nrow=20).name
    best_md, all_md = markdown_tables(rows, best, unsafe_label, extra_cols, limit)
    result = {"benchmark": name, "title": title, "config": config, "target_unsafe": target,
              "target_broken": limit, "fd_label": FD_LABEL, "rows": [r.as_dict() for r in rows], "best": best,
              "grids": grids}
    write_json(out / "results.json", result)
    write_text(out / "results.md", report_document(
        title, notes, config, f"Best operating point per method (lowest FD with {unsafe_label} <= {100 * target:.0f}% "
        f"and broken <= {100 * limit:.1f}% (plain's share + 1 point, at least 1%), else lowest {unsafe_label} with "
        f"broken <= {100 * limit:.1f}%)", best_md, all_md,
        "Samples at each method's best operating point (first 40 seeds, same seeds for every method)", grids))
    return result


def rejection_row(bench: Benchmark, draw: Callable[[Sequence[int]], Tensor], is_unsafe: Callable[[Tensor], Tensor],
                  nfe: int, plain: Tensor) -> Record:
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
    measured = bench.measure(result.samples, result.seeds)
    bench.samples["rejection:None"] = result.samples
    # draws needed when sampling one seed at a time (the batches above may draw a few seeds past the last one kept)
    needed = result.attempts if result.exhausted else max(result.seeds) - first + 1
    return image_record(Setting("rejection", "-", None), measured, nfe * needed / max(1, len(result.seeds)),
                        time.time() - start, {"attempts": float(needed)}, broken=bench.broken_share(result.samples))


