"""``safe-denoiser bench kernel``: the streamed kernel at scale (time, peak memory, bandwidth), top-k, end to end.

Sections, all in one process so that ratios share the machine's momentary load:

1. grid: N x D x B, random float data; time per call of :func:`~safedenoiser.kernels.kernel_moments` (E_unsafe
   and log-mass), peak extra memory (Linux peak RSS reset through /proc/self/clear_refs), effective bandwidth
   N D bytes / time against the read bandwidth of a plain ``sum`` over 1 GiB measured in the same run, and
   the naive B x N x D formulation of the authors' code where it fits in ``--naive-gb``.
2. storage: float32 / float16 / bfloat16 storage of the largest in-memory D = 784 set.
3. topk: Fashion-MNIST training images, shifted by up to 2 pixels and perturbed to N items, queried with
   noised test images: exact against faiss IVF top-k (speed, error, reported bound, fallbacks).
4. e2e: sampling overhead of the paper-mode safe denoiser on the Fashion-MNIST UNet with 6,000 training
   images of one class as the negation set.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import cpu_kernel
from ..argtypes import add_config_flags, given_config_values, positive_float, positive_int
from ..kernels import kernel_moments, squared_norms
from ..negation import NegationSet
from ..results import write_atomic
from . import bench_subparsers
from .naive import naive_moments

GIB = 1 << 30
BACKEND = "fused" if cpu_kernel.available() else "torch"  # the grid and storage cells time this one in every cell


@dataclass
class KernelBenchConfig:
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    dims: tuple[int, ...] = (784, 16384)
    batches: tuple[int, ...] = (1, 8)
    repeats: int = 3
    threads: int = 1
    max_ram_gb: float = 8.0
    naive_gb: float = 2.0
    disk: bool = False
    topk_size: int = 1_000_000
    topk_k: int = 256
    topk_index: str = "ivf"
    topk_sigmas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    tolerance: float = 1e-3
    e2e_steps: int = 18
    e2e_batch: int = 16
    sections: tuple[str, ...] = ("grid", "storage", "topk", "e2e")
    out: str = "results/scale"
    scratch: str = "runs/scale"
    seed: int = 0
    read_gib: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


QUICK = dict(sizes=(1_000, 10_000), dims=(784, 2048), repeats=2, topk_size=20_000, e2e_steps=4, e2e_batch=4,
             max_ram_gb=1.0, naive_gb=0.2)


# --------------------------------------------------------------------------------------------- measurement
def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_extra_memory(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """Run ``fn`` and return its result and the peak resident memory above the level before it (bytes), from
    Linux's VmHWM after resetting it (write 5 to /proc/self/clear_refs); None where that is unavailable."""
    gc.collect()
    before = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        before = None
    result = fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return result, None
    return result, max(0, peak - before) * 1024.0


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median, min) wall time of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def timed_against(fn: Callable[[], Any], baseline: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall times of ``fn`` and ``baseline``, called alternately (after one warm-up each), so that both
    see the same share of a machine that other processes are using."""
    fn(), baseline()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for f, out in ((fn, times[0]), (baseline, times[1])):
            start = time.perf_counter()
            f()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def read_bandwidth(nbytes: int = GIB, repeats: int = 5) -> float:
    """Bytes per second of ``torch.sum`` over a float32 buffer much larger than the caches (best of repeats)."""
    buffer = torch.ones(nbytes // 4)
    _, best = timed(lambda: buffer.sum(), repeats)
    return nbytes / best


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Multiply-adds per second of a float32 (size x size) @ (size x size) matmul in torch's threads (best of
    repeats): the cores' practical multiply-add rate, which bounds any kernel doing 2 B D multiply-adds per row."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    _, best = timed(lambda: a @ b, repeats)
    return size**3 / best


def random_points(count: int, dim: int, dtype: torch.dtype, seed: int) -> Tensor:
    """(count, dim) standard normal items in ``dtype``, generated in chunks (no float32 copy of a float16 set)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(count, dim, dtype=dtype)
    step = max(1, (64 << 20) // (4 * dim))
    for start in range(0, count, step):
        out[start : start + step] = torch.randn(min(step, count - start), dim, generator=gen).to(dtype)
    return out


def _rel(a: Tensor, b: Tensor) -> float:
    """max over rows of |a - b| / |b| (rows of a matrix, or entries of a vector)."""
    a, b = a.double(), b.double()
    if a.ndim == 1:
        return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)).max())


# --------------------------------------------------------------------------------------------- sections
def grid_section(cfg: KernelBenchConfig, bandwidth_gbs: float, progress: bool) -> list[dict[str, Any]]:
    rows = []
    ram = cfg.max_ram_gb * 1e9
    for dim in cfg.dims:
        for count in cfg.sizes:
            nbytes = count * dim * 4
            if nbytes > ram:
                rows.append(_disk_cell(cfg, count, dim, bandwidth_gbs) if cfg.disk else
                            {"n": count, "d": dim, "status": f"skipped: {nbytes / 1e9:.1f} GB float32 > --max-ram-gb "
                             f"{cfg.max_ram_gb:g} (run with --disk for a memory-mapped float16 file)"})
                continue
            points = random_points(count, dim, torch.float32, cfg.seed)
            sq = squared_norms(points)
            for batch in cfg.batches:
                gen = torch.Generator().manual_seed(cfg.seed + 1)
                x = points[torch.randint(0, count, (batch,), generator=gen)] + torch.randn(batch, dim, generator=gen)
                bandwidth = math.sqrt(dim) * 0.5
                call = lambda: kernel_moments(x, points, bandwidth, point_sq_norms=sq, backend=BACKEND)  # noqa: E731
                median, sum_median = timed_against(call, lambda: points.sum(), cfg.repeats)
                moments, peak = peak_extra_memory(call)
                torch_path, _ = timed(lambda: kernel_moments(x, points, bandwidth, point_sq_norms=sq, backend="torch"),
                                      max(1, cfg.repeats - 1))
                row = {"n": count, "d": dim, "b": batch, "status": "ok", "seconds": median, "sum_seconds": sum_median,
                       "torch_path_seconds": torch_path,
                       "pass_fraction": sum_median / median, "peak_extra_mb": None if peak is None else peak / 1e6,
                       "bandwidth_gbs": nbytes / median / 1e9, "bandwidth_fraction": nbytes / median / 1e9 / bandwidth_gbs}
                naive_bytes = 2 * batch * count * dim * 4
                if naive_bytes <= cfg.naive_gb * 1e9:
                    naive = lambda: naive_moments(x, points, bandwidth)[:2]  # noqa: E731
                    row["naive_seconds"], _ = timed(naive, max(1, cfg.repeats - 1))
                    (ref_mass, ref_mean), naive_peak = peak_extra_memory(naive)
                    row["naive_peak_extra_mb"] = None if naive_peak is None else naive_peak / 1e6
                    row["rel_err_vs_naive_mass"] = _rel(moments.log_mass, ref_mass)
                    row["rel_err_vs_naive_mean"] = _rel(moments.mean, ref_mean)
                else:
                    row["naive_seconds"] = f"does not fit: B x N x D needs {naive_bytes / 1e9:.1f} GB"
                rows.append(row)
                if progress:
                    tqdm.write(_grid_line(row))
            del points, sq
            gc.collect()
    return rows


def _disk_cell(cfg: KernelBenchConfig, count: int, dim: int, bandwidth_gbs: float) -> dict[str, Any]:
    """One pass per call over a memory-mapped float16 file on disk (bigger than memory); the file is deleted."""
    from ..negation_file import SafetensorsWriter, map_safetensors

    path = Path(cfg.scratch) / f"disk_{count}x{dim}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer = SafetensorsWriter(path, (count, dim), torch.float16)
        step = max(1, (256 << 20) // (4 * dim))
        gen = torch.Generator().manual_seed(cfg.seed)
        for start in tqdm(range(0, count, step), desc=f"writing {path.name}", leave=False):
            writer.write(start, torch.randn(min(step, count - start), dim, generator=gen))
        writer.close({"format": "benchmark scratch"})
        data, _ = map_safetensors(path)
        nbytes = count * dim * 2
        row: dict[str, Any] = {"n": count, "d": dim, "status": "ok (memory-mapped float16 file on disk)", "file_gb": nbytes / 1e9}
        start = time.perf_counter()
        with open(path, "rb", buffering=0) as handle:
            buffer = bytearray(64 << 20)
            while handle.readinto(buffer):
                pass
        row["disk_read_gbs"] = path.stat().st_size / (time.perf_counter() - start) / 1e9
        for batch in cfg.batches:
            x = torch.randn(batch, dim, generator=gen)
            begin = time.perf_counter()
            moments, peak = peak_extra_memory(lambda: kernel_moments(x, data, math.sqrt(dim) * 0.5, backend=BACKEND))
            seconds = time.perf_counter() - begin
            row[f"b{batch}_seconds"] = seconds
            row[f"b{batch}_bandwidth_gbs"] = nbytes / seconds / 1e9
            row[f"b{batch}_disk_fraction"] = nbytes / seconds / 1e9 / row["disk_read_gbs"]
            row[f"b{batch}_peak_extra_mb_incl_mapped_pages"] = None if peak is None else peak / 1e6
            row[f"b{batch}_finite"] = bool(torch.isfinite(moments.mean).all())
        del data
        return row
    finally:
        path.unlink(missing_ok=True)


def storage_section(cfg: KernelBenchConfig, bandwidth_gbs: float) -> list[dict[str, Any]]:
    dim = 784 if 784 in cfg.dims else cfg.dims[0]
    fitting = [n for n in cfg.sizes if n * dim * 4 <= cfg.max_ram_gb * 1e9]
    if not fitting:
        return []
    count = max(fitting)
    base = random_points(count, dim, torch.float32, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    x = base[:1] + torch.randn(1, dim, generator=gen)
    bandwidth = math.sqrt(dim) * 0.5
    rows, reference = [], None
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        points = base if dtype == torch.float32 else base.to(dtype)
        sq = squared_norms(points)
        call = lambda: kernel_moments(x, points, bandwidth, point_sq_norms=sq, backend=BACKEND)  # noqa: E731
        median, sum_median = timed_against(call, lambda: base.sum(), cfg.repeats)
        moments, peak = peak_extra_memory(call)
        reference = reference or moments
        nbytes = points.numel() * points.element_size()
        rows.append({"n": count, "d": dim, "b": 1, "storage": str(dtype).replace("torch.", ""), "seconds": median,
                     "float32_sum_seconds": sum_median,
                     "bandwidth_gbs": nbytes / median / 1e9, "bandwidth_fraction": nbytes / median / 1e9 / bandwidth_gbs,
                     "peak_extra_mb": None if peak is None else peak / 1e6,
                     "mean_rel_diff_vs_float32": _rel(moments.mean, reference.mean)})
        del points, sq
    return rows


def augmented_fashion(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` items from the Fashion-MNIST training set (in [-1, 1]), each shifted by up to 2 pixels and
    perturbed by N(0, 0.05^2) pixel noise, and the 10,000 test images (queries)."""
    from ..zoo.images.data import load_fashion_mnist

    train = load_fashion_mnist("train").images
    test = load_fashion_mnist("test").images
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(count, 784)
    step = 50_000
    for start in range(0, count, step):
        rows = min(step, count - start)
        pick = train[torch.randint(0, train.shape[0], (rows,), generator=gen)]
        shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
        block = torch.roll(pick, shifts=shift, dims=(2, 3)).reshape(rows, -1)
        out[start : start + rows] = block + 0.05 * torch.randn(rows, 784, generator=gen)
    return out, test.reshape(test.shape[0], -1)


def topk_section(cfg: KernelBenchConfig, progress: bool) -> dict[str, Any]:
    from ..scale.topk import TopKKernel

    points, test = augmented_fashion(cfg.topk_size, cfg.seed)
    negation = NegationSet(points, space="pixels", source="augmented fashion-mnist train")
    negation.sq_norms  # noqa: B018 - cache the norms outside the timings
    start = time.perf_counter()
    topk = TopKKernel(negation, cfg.topk_index, nprobe=16, seed=cfg.seed, progress=progress)
    build = time.perf_counter() - start
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    rows = []
    for batch in cfg.batches:
        x0 = test[torch.randint(0, test.shape[0], (batch,), generator=gen)]
        noise = torch.randn(batch, 784, generator=gen)
        for sigma in cfg.topk_sigmas:
            x = x0 + sigma * noise
            exact_s, _ = timed(lambda: negation.moments(x, sigma), cfg.repeats)
            exact = negation.moments(x.double(), sigma)  # float64 reference for the errors
            row = {"n": cfg.topk_size, "d": 784, "b": batch, "sigma": sigma, "exact_seconds": exact_s,
                   "max_kernel_weight": float(torch.exp(exact.max_logit - exact.log_mass).min())}
            for label, tol in (("fixed_k", math.inf), ("tolerance", cfg.tolerance)):
                call = lambda: topk.moments(x, sigma, k=cfg.topk_k, tolerance=tol)  # noqa: E731
                seconds, _ = timed(call, cfg.repeats)
                result = call()
                row[label] = {"seconds": seconds, "speedup": exact_s / seconds, "k_max": int(result.k.max()),
                              "exact_rows": int(result.exact.sum()), "rel_bound_max": float(result.rel_bound.max()),
                              "mean_rel_err": _rel(result.mean, exact.mean),
                              "log_mass_abs_err": float((result.log_mass.double() - exact.log_mass).abs().max())}
            rows.append(row)
            if progress:
                tqdm.write(f"topk b={batch} sigma={sigma}: exact {exact_s:.3f}s | k={cfg.topk_k}: {row['fixed_k']['seconds']:.4f}s "
                           f"err {row['fixed_k']['mean_rel_err']:.1e} bound {row['fixed_k']['rel_bound_max']:.1e} | "
                           f"tol {cfg.tolerance:g}: {row['tolerance']['seconds']:.4f}s exact rows {row['tolerance']['exact_rows']}")
    return {"index": topk.spec, "nprobe": topk.nprobe, "build_seconds": build, "k": cfg.topk_k, "rows": rows}


def e2e_section(cfg: KernelBenchConfig) -> dict[str, Any]:
    from ..zoo.images.assets import MODELS
    from ..zoo.images.common import edm_sigmas
    from ..zoo.images.data import load_fashion_mnist
    from ..zoo.images.network import EDMUNet, load_checkpoint, unet_config
    from ..zoo.images.train import TrainConfig
    from ..methods import Window, safe_denoiser
    from ..sampling import sample

    if MODELS["uncond"].is_file():
        model, weights = load_checkpoint(MODELS["uncond"]), f"shipped {MODELS['uncond'].name}"
    else:
        defaults = TrainConfig()
        model = EDMUNet(unet_config(28, 1, defaults.widths, attention=defaults.attention))
        weights = f"random weights, shipped architecture (widths {defaults.widths}); {MODELS['uncond'].name} absent"
    model.eval()
    train = load_fashion_mnist("train")
    negation = NegationSet(train.of_class("trouser").images, space="pixels", source="fashion-mnist train, class trouser")
    negation.sq_norms  # noqa: B018
    sigmas = edm_sigmas(cfg.e2e_steps)
    seeds = list(range(cfg.e2e_batch))
    model_seconds = [0.0]

    def timed_model(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        start = time.perf_counter()
        out = model(x, sigma, **cond)
        model_seconds[0] += time.perf_counter() - start
        return out

    denoisers = {"plain": timed_model, "every step": safe_denoiser(timed_model, negation, "paper", eta=1.0),
                 "paper window (first 22% of steps)": safe_denoiser(
                     timed_model, negation, "paper", eta=1.0, window=Window.from_step_fractions(sigmas, 0.0, 0.22))}
    times: dict[str, list[float]] = {name: [] for name in denoisers}
    per_model_second: dict[str, list[float]] = {name: [] for name in denoisers}
    with torch.no_grad():
        names = list(denoisers)
        for repeat in range(cfg.repeats + 1):
            order = names[repeat % len(names):] + names[: repeat % len(names)]  # rotated: no method always runs first
            for name in order:  # interleaved, so that all share the machine's load
                model_seconds[0] = 0.0
                start = time.perf_counter()
                sample(denoisers[name], seeds, (1, 28, 28), sigmas)
                if repeat:
                    times[name].append(time.perf_counter() - start)
                    per_model_second[name].append(times[name][-1] / model_seconds[0])
    best = {name: min(values) for name, values in times.items()}
    normalised = {name: statistics.median(values) for name, values in per_model_second.items()}
    return {"weights": weights, "negation_items": len(negation), "batch": cfg.e2e_batch, "heun_steps": cfg.e2e_steps,
            "seconds": best, "overhead": {name: best[name] / best["plain"] - 1 for name in best if name != "plain"},
            "overhead_per_model_second": {name: normalised[name] / normalised["plain"] - 1 for name in best if name != "plain"}}


# --------------------------------------------------------------------------------------------- report
def _fmt(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else (format(value, spec) if isinstance(value, (int, float)) else str(value))


def _grid_line(row: dict[str, Any]) -> str:
    return (f"N={row['n']:>8} D={row['d']:>6} B={row['b']}: {row['seconds']:.4f} s, {row['bandwidth_gbs']:.2f} GB/s "
            f"({100 * row['bandwidth_fraction']:.0f}% of read; a sum over the same data: {row['sum_seconds']:.4f} s), "
            f"peak +{_fmt(row['peak_extra_mb'])} MB; torch path {row['torch_path_seconds']:.4f} s")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Machine: {report['machine']}; torch threads: {report['threads']}; kernel backend: {report.get('backend', 'torch')}; "
             f"matmul rate {report.get('matmul_peak_gmacs', float('nan')):.1f} G multiply-adds/s; read bandwidth (sum over {report['config']['read_gib']:g} GiB, best of 5): "
             f"{report['read_bandwidth_gbs'][0]:.2f} GB/s before, {report['read_bandwidth_gbs'][1]:.2f} GB/s after.", ""]
    if report.get("grid"):
        lines += ["% of read bw: N D 4 bytes / time against the larger of the two read-bandwidth measurements above; sum / kernel: a `sum` over the same set, "
                  "timed alternately with the kernel (robust to other processes' load). Compute roof: the read speed at which 2 B multiply-adds "
                  f"per float run at the measured matmul rate ({report['matmul_peak_gmacs']:.1f} G multiply-adds/s), as % of the read bandwidth; "
                  "% of roof: GB/s against the smaller of the two roofs. torch path: the chunked torch formulation (`backend=\"torch\"`).", "",
                  "| N | D | B | s / call | GB/s | % of read bw | compute roof | % of roof | sum / kernel | peak extra MB | torch path s / call | "
                  "naive s / call | naive peak MB | rel. err vs naive (mean) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in report["grid"]:
            if row["status"] != "ok":
                extra = {k: v for k, v in row.items() if k not in ("n", "d", "status")}
                lines.append(f"| {row['n']:,} | {row['d']} | - | {row['status']} {json.dumps(extra) if extra else ''} |||||||||||")
                continue
            lines.append(f"| {row['n']:,} | {row['d']} | {row['b']} | {row['seconds']:.4f} | {row['bandwidth_gbs']:.2f} | "
                         f"{100 * row['bandwidth_fraction']:.0f}% | {100 * row['compute_roof_fraction']:.0f}% | {100 * row['roof_fraction']:.0f}% | "
                         f"{100 * row['pass_fraction']:.0f}% | {_fmt(row['peak_extra_mb'], '.1f')} | {row['torch_path_seconds']:.4f} | "
                         f"{_fmt(row['naive_seconds'], '.4f')} | "
                         f"{_fmt(row.get('naive_peak_extra_mb'), '.0f')} | {_fmt(row.get('rel_err_vs_naive_mean'), '.1e')} |")
        lines.append("")
    if report.get("storage"):
        lines += ["| storage | N | D | s / call | GB/s (stored bytes) | % of read bw | float32 sum / kernel | peak extra MB | "
                  "mean rel. diff vs float32 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in report["storage"]:
            lines.append(f"| {row['storage']} | {row['n']:,} | {row['d']} | {row['seconds']:.4f} | {row['bandwidth_gbs']:.2f} | "
                         f"{100 * row['bandwidth_fraction']:.0f}% | {100 * row['float32_sum_seconds'] / row['seconds']:.0f}% | "
                         f"{_fmt(row['peak_extra_mb'], '.1f')} | {row['mean_rel_diff_vs_float32']:.1e} |")
        lines.append("")
    if report.get("topk"):
        top = report["topk"]
        lines += [f"Top-k: faiss `{top['index']}`, nprobe {top['nprobe']}, built in {top['build_seconds']:.1f} s; k = {top['k']}.", "",
                  "| B | sigma | exact s | top-k s | speedup | E_unsafe rel. err | log-mass err | reported bound | "
                  f"tol {report['config']['tolerance']:g}: s | speedup | rows exact | max k |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in top["rows"]:
            f, t = row["fixed_k"], row["tolerance"]
            lines.append(f"| {row['b']} | {row['sigma']:g} | {row['exact_seconds']:.3f} | {f['seconds']:.4f} | {f['speedup']:.1f}x | "
                         f"{f['mean_rel_err']:.1e} | {f['log_mass_abs_err']:.1e} | {f['rel_bound_max']:.1e} | {t['seconds']:.4f} | "
                         f"{t['speedup']:.1f}x | {t['exact_rows']}/{row['b']} | {t['k_max']} |")
        lines.append("")
    if report.get("e2e"):
        e = report["e2e"]
        runs = "; ".join(f"{name} {e['seconds'][name]:.2f} s ({100 * e['overhead'][name]:+.1f}%; per model second "
                         f"{100 * e['overhead_per_model_second'][name]:+.1f}%)" for name in e["overhead"])
        lines += [f"End to end ({e['weights']}): {e['batch']} samples, Heun {e['heun_steps']} steps, {e['negation_items']} negation "
                  f"items, paper mode, best of {report['config']['repeats']} runs: plain {e['seconds']['plain']:.2f} s; {runs}. "
                  "Per model second: median over runs of (run time / time inside the UNet in that run), against plain; "
                  "robust to the machine's speed drifting between runs.", ""]
    return "\n".join(lines)


def run_benchmark(cfg: KernelBenchConfig, progress: bool = True) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    read_bytes = max(1 << 20, int(cfg.read_gib * GIB))
    before = read_bandwidth(read_bytes)
    report: dict[str, Any] = {"config": asdict(cfg), "threads": cfg.threads, "matmul_peak_gmacs": matmul_peak() / 1e9,
                              "backend": BACKEND,
                              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
                                         f"torch {torch.__version__}"}
    if "grid" in cfg.sections:
        report["grid"] = grid_section(cfg, before / 1e9, progress)
    if "storage" in cfg.sections:
        report["storage"] = storage_section(cfg, before / 1e9)
    if "topk" in cfg.sections:
        report["topk"] = topk_section(cfg, progress)
    if "e2e" in cfg.sections:
        report["e2e"] = e2e_section(cfg)
    report["read_bandwidth_gbs"] = [before / 1e9, read_bandwidth(read_bytes) / 1e9]
    best = max(report["read_bandwidth_gbs"])  # the less disturbed of the two measurements: a conservative fraction
    for row in [*report.get("grid", []), *report.get("storage", [])]:
        if "bandwidth_gbs" in row:
            row["bandwidth_fraction"] = row["bandwidth_gbs"] / best
        if "b" in row and "bandwidth_gbs" in row:
            compute_roof = report["matmul_peak_gmacs"] * 4 / (2 * row["b"])  # GB/s: 4 bytes per 2 B multiply-adds
            row["compute_roof_fraction"] = compute_roof / best
            row["roof_fraction"] = row["bandwidth_gbs"] / min(best, compute_roof)
    out = Path(cfg.out)
    write_atomic(out / "kernel.json", json.dumps(report, indent=1))
    write_atomic(out / "kernel.md", markdown(report))
    return report


#: the command's options, one per config field (argtypes.add_config_flags: default and value shape from the config)
CLI_FLAGS: dict[str, dict[str, Any]] = {
    "sizes": dict(type=positive_int, help="negation-set sizes N"),
    "dims": dict(type=positive_int, help="dimensions D"),
    "batches": dict(type=positive_int, help="query batch sizes B"),
    "sections": dict(choices=KernelBenchConfig.sections, help="what to measure"),
    "repeats": dict(type=positive_int, help="timed repeats per cell (the median is reported)"),
    "threads": dict(type=positive_int, help="torch / faiss threads"),
    "max_ram_gb": dict(type=positive_float, help="largest in-memory float32 set"),
    "naive_gb": dict(type=positive_float, help="largest B x N x D naive formulation"),
    "topk_size": dict(type=positive_int, help="N of the top-k section"),
    "topk_k": dict(type=positive_int, flag="--k", help="k of the top-k kernel"),
    "topk_index": dict(help="TopKKernel index: ivf, exact or a faiss factory string"),
    "tolerance": dict(type=positive_float, help="top-k bound on left-out / retrieved mass"),
    "out": dict(help="results folder"),
    "scratch": dict(help="folder for the disk cells' temporary files"),
    "read_gib": dict(type=positive_float, help="buffer for the read-bandwidth measurement"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers(subparsers).add_parser(
        "kernel", help="streamed kernel at scale: time, memory, bandwidth, top-k, end-to-end overhead",
        description=__doc__.splitlines()[0])
    add_config_flags(parser, KernelBenchConfig(), CLI_FLAGS)
    parser.add_argument("--disk", action="store_true", help="run cells above --max-ram-gb on a float16 file in --scratch")
    parser.add_argument("--quick", action="store_true", help="CI-sized run (explicit flags still win)")
    parser.set_defaults(run=_main)


def _main(args: argparse.Namespace) -> int:
    values = {k: v for k, v in asdict(KernelBenchConfig()).items() if k != "extra"}
    if args.quick:
        values.update(QUICK)
    values.update(given_config_values(args, CLI_FLAGS))
    values["disk"] = args.disk
    args.out = values["out"]
    report = run_benchmark(KernelBenchConfig(**values))
    print(markdown(report))
    print(f"written: {Path(args.out) / 'kernel.md'}, {Path(args.out) / 'kernel.json'}")
    return 0
