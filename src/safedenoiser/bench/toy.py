"""Mixture benchmark: every method against the exact safe distribution, each swept over its main knob.

Three families of isotropic Gaussian mixtures in D dimensions, N negation samples from the negated components:
``toy`` (8 well-separated modes, 2 negated: 25% of the mass), ``adjacent`` (12 modes on a ring 5 spreads apart, an
arc of 2 negated whose neighbours are safe) and ``mostly`` (the toy modes with 6 of 8 negated: 75% of the mass). Every method samples with the same sampler, schedule and seeds; metrics are the
unsafe fraction (exact Bayes judge), the MMD to exact p_safe samples, denoiser evaluations per kept
sample and wall time. Results are resumable (runs.jsonl) and written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..methods.calibration import COVERAGE_CUTS
from ..methods.ratio import RatioCalibration, RatioFit
from ..methods import Calibration, CorrectedDenoiser, NegativeGuidance, SparseRepellency, default_candidates, holdout_size, make_correction, select_knobs
from ..methods.registry import MethodInputs, authors_threshold, for_benchmark, sweep_table
from ..metrics import median_bandwidths, mmd, unsafe_fraction
from ..models.mixture import GaussianMixture, make_mixture, make_ring_mixture
from ..negation import NegationSet
from ..kernels import nearest_distances
from ..results import RunLog, pyplot, save_figure, write_atomic
from ..sampling import heun, initial_noise, karras_sigmas, rejection_sample, sample
from . import bench_subparsers
from .records import Record, Setting
from .report import best_per_method, markdown_table

UNSAFE_TARGET = 0.01
BANK_SEED = 10**6  # bank seeds never overlap the evaluation seeds 0..samples-1
AUTO_SEED = 2 * 10**6  # seeds of the default gain rule's trial samples
FAMILIES = {  # name -> (mixture builder (dim, seed), negated components)
    "toy": (lambda dim, seed: make_mixture(dim, seed=seed), [0, 1]),
    "adjacent": (lambda dim, seed: make_ring_mixture(dim, seed=seed), [0, 1]),
    "mostly": (lambda dim, seed: make_mixture(dim, seed=seed), [0, 1, 2, 3, 4, 5]),
}


@dataclass
class ToyConfig:
    dims: tuple[int, ...] = (2, 16, 64, 256)
    samples: int = 1000  # samples per run (and per reference set)
    negation: int = 500  # N, items in the negation set
    bank: int = 2000  # M, unguided samples for the calibrated mode
    steps: int = 40  # Heun steps (2 * steps - 1 denoiser evaluations per sample)
    sigma_min: float = 0.002
    sigma_max: float = 20.0
    family: str = "toy"
    cut: str = "worst-case"  # the bank's coverage cut (Calibration.from_bank): worst-case or fixed-point
    ratio: bool = False  # also run the fitted-ratio estimator of beta* (methods/ratio.py): its sweeps and default rule
    seed: int = 0
    out: str = "results/toy"
    sweeps: dict[str, list[float]] = field(default_factory=lambda: sweep_table("toy"))  # methods.registry.CATALOGUE

    def __post_init__(self) -> None:
        for name in ("samples", "negation", "bank", "steps"):
            if getattr(self, name) < 2:
                raise ValueError(f"toy benchmark: --{name} must be at least 2, got {getattr(self, name)}")
        if not self.dims or min(self.dims) < 1:
            raise ValueError(f"toy benchmark: dimensions must be positive, got {self.dims}")
        if self.family not in FAMILIES:
            raise ValueError(f"toy benchmark: unknown mixture family {self.family!r}; choose one of {sorted(FAMILIES)}")
        if self.family == "adjacent" and min(self.dims) < 2:
            raise ValueError("toy benchmark: the adjacent family needs dimensions >= 2")


QUICK = dict(dims=(2, 16), samples=200, negation=100, bank=400, steps=10)


class EvaluationCounter:
    """Counts denoiser evaluations (rows) across every denoiser it wraps."""

    def __init__(self) -> None:
        self.rows = 0

    def wrap(self, denoiser: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def counted(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
            self.rows += x.shape[0]
            return denoiser(x, sigma, **cond)

        return counted


@dataclass
class Problem:
    """Everything fixed for one dimension: the mixture, the negation set, references and the bank."""

    dim: int
    mixture: GaussianMixture
    unsafe: list[int]
    negation: NegationSet
    reference: Tensor
    bandwidths: list[float]
    noise_floor: float
    sigmas: Tensor
    calibration: Calibration
    bank: Tensor  # (M, D) unguided samples
    bank_evaluations: int
    bank_distances: Tensor  # (M,) distance from each unguided bank sample to its nearest negation item
    ratio: Calibration | None = None  # the fitted-ratio calibration (cfg.ratio)

    def distance_quantile(self, q: float) -> float:
        return float(torch.quantile(self.bank_distances.double(), q))

    @property
    def safe_mixture(self) -> GaussianMixture:
        return self.mixture.restrict([k for k in range(self.mixture.means.shape[0]) if k not in self.unsafe])

    def is_unsafe(self, x: Tensor) -> Tensor:
        return torch.isin(self.mixture.classify(x), torch.tensor(self.unsafe))


def build_problem(dim: int, cfg: ToyConfig) -> Problem:
    build, unsafe = FAMILIES[cfg.family]
    mixture = build(dim, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    negation = NegationSet(mixture.restrict(unsafe).sample(cfg.negation, gen)[0].float(), space="mixture",
                           source=f"{cfg.family} mixture (dim={dim}, seed={cfg.seed}) components {unsafe}")
    safe = mixture.restrict([k for k in range(mixture.means.shape[0]) if k not in unsafe])
    reference = safe.sample(cfg.samples, gen)[0]
    bandwidths = median_bandwidths(reference)
    noise_floor = mmd(safe.sample(cfg.samples, gen)[0], reference, bandwidths)
    sigmas = karras_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max)
    counter = EvaluationCounter()
    bank = sample(counter.wrap(mixture), list(range(BANK_SEED, BANK_SEED + cfg.bank)), (dim,), sigmas, sampler="heun")
    ratio = RatioCalibration.fit(bank, negation, ratio_fit(cfg)) if cfg.ratio else None
    return Problem(dim, mixture, unsafe, negation, reference, bandwidths, noise_floor, sigmas,
                   Calibration.from_bank(bank, negation, cut=cfg.cut), bank, counter.rows, nearest_distances(bank, negation.flat),
                   ratio)


def ratio_fit(cfg: ToyConfig) -> RatioFit:
    """The classifier settings of the fitted-ratio rows: trained over the benchmark's sigma range (floor: RatioFit's)."""
    return RatioFit(sigma_max=cfg.sigma_max, seed=cfg.seed)


Factory = Callable[[EvaluationCounter], Callable[..., Tensor]]


def method_runs(problem: Problem, cfg: ToyConfig, rules: dict[str, dict[str, Any]] | None = None) -> list[Setting]:
    """A setting (``make``: a :data:`Factory` of the counted denoiser) for every point of every sweep, and one with the
    knobs the default rule picked for each mode in ``rules``."""
    neg, mix = problem.negation, problem.mixture
    unsafe_mixture = mix.restrict(problem.unsafe)

    def corrected(correction_factory: Callable[[], Any]) -> Factory:
        return lambda counter: CorrectedDenoiser(counter.wrap(mix), correction_factory())

    runs = [Setting("plain", "-", 0.0, lambda counter: counter.wrap(mix)),
            Setting("oracle", "-", 0.0, lambda counter: counter.wrap(problem.safe_mixture))]
    inputs = MethodInputs(neg, None, threshold_sigma=cfg.sigma_min, calibration=problem.calibration)  # no windows
    for method, sweep in for_benchmark("toy"):  # the catalogue's x0 corrections; the toy's own variants below
        if not sweep.custom and method.is_correction:
            runs += [Setting(method.sweep_row(sweep), method.sweep_knob(sweep), value, corrected(
                lambda m=method, s=sweep, v=value: m.correction(inputs, v, s)))
                for value in cfg.sweeps.get(method.sweep_key(sweep), [])]
    if problem.ratio is not None:
        for mode in ("substitution", "calibrated"):
            runs += [Setting(f"{mode} (ratio)", "gain", gain, corrected(lambda mode=mode, gain=gain: make_correction(
                neg, mode, calibration=problem.ratio, gain=gain))) for gain in cfg.sweeps[f"{mode}_ratio"]]
    for rule, knobs in (rules or {}).items():
        label = "gain" + ("+floor" if knobs.get("floor") else "")
        mode, calibration = rule_mode(rule), problem.ratio if rule.endswith("(ratio)") else problem.calibration
        runs.append(Setting(rule_method(rule), label, knobs["gain"], corrected(lambda mode=mode, k=knobs, c=calibration: make_correction(
            neg, mode, calibration=c, **k))))
    for factor in cfg.sweeps["reference_bandwidth"]:
        # exp(-d / (2 s^2)) falls to 1/e at d = factor^2 * (median distance of a model sample to the negation set)
        bandwidth = factor * math.sqrt(problem.distance_quantile(0.5) / 2)
        threshold = authors_threshold(neg, cfg.sigma_min, bandwidth=bandwidth)
        runs += [Setting(f"reference (s={bandwidth:.3g})", "scale", scale, corrected(
            lambda scale=scale, b=bandwidth, t=threshold: make_correction(neg, "authors", bandwidth=b, scale=scale, log_threshold=t)))
            for scale in cfg.sweeps["reference"]]
    # SPELL radii: quantiles of the distance from unguided samples to the negation set (the share of samples
    # a radius would touch), so the sweep spans "nearly nothing" to "most of the distribution" in any D
    # plus fractions of the smallest quantile, since in high dimension the distances concentrate
    radii = [f * problem.distance_quantile(cfg.sweeps["spell"][0]) for f in cfg.sweeps["spell_below"]]
    radii += [problem.distance_quantile(q) for q in cfg.sweeps["spell"]]
    runs += [Setting("spell", "radius", r, corrected(lambda r=r: SparseRepellency(neg, radius=r))) for r in radii]
    runs += [Setting("negative guidance", "weight", w, lambda counter, w=w: NegativeGuidance(
        counter.wrap(mix), counter.wrap(unsafe_mixture), w)) for w in cfg.sweeps["negative_guidance"]]
    return runs


def rule_mode(rule: str) -> str:
    """The mode of a default-rule key: ``substitution`` or ``calibrated``, with `` (ratio)`` for the fitted ratio."""
    return rule.split(" (")[0]


def rule_method(rule: str) -> str:
    """The method name of a default-rule row: ``substitution (default rule)``, ``substitution (ratio, default rule)``."""
    return f"{rule[:-1]}, default rule)" if rule.endswith(")") else f"{rule} (default rule)"


def default_rule(problem: Problem, mode: str, cfg: ToyConfig | None = None, judge: Any = None) -> dict[str, Any]:
    """The knobs the default rule (:func:`select_knobs`) picks for ``mode`` (``substitution (ratio)`` etc.: judged and
    calibrated with the fitted ratio) from the model, the negation set and the bank alone, with its trials and the
    denoiser evaluations they cost (trial samples have their own seeds). ``judge``: who counts the trials
    (``select_knobs(judge=)``; None: the calibration itself). Each trial also records ``exact_unsafe``, its share of
    samples in the negated components (the mixture knows; the rule never reads it)."""
    ratio = mode.endswith("(ratio)")
    mode = rule_mode(mode)
    seeds = list(range(AUTO_SEED, AUTO_SEED + holdout_size(problem.bank.shape[0])))
    counter = EvaluationCounter()
    exact: list[float] = []

    def draw(knobs: dict[str, Any], calibration: Calibration) -> Tensor:
        corrected = CorrectedDenoiser(counter.wrap(problem.mixture),
                                      make_correction(problem.negation, mode, calibration=calibration, **knobs))
        samples = sample(corrected, seeds, (problem.dim,), problem.sigmas, sampler="heun")
        exact.append(float(problem.is_unsafe(samples).double().mean()))
        return samples

    choice = select_knobs(draw, problem.bank, problem.negation, default_candidates(mode), cut=problem.calibration.cut,
                          calibrate=partial(RatioCalibration.fit, fit=ratio_fit(cfg or ToyConfig())) if ratio else None,
                          judge=judge)
    trials = [{**trial, "exact_unsafe": unsafe} for trial, unsafe in zip(choice.trials, exact)]
    return {"knobs": choice.knobs, "meets_target": choice.meets_target, "trials": trials, "evaluations": counter.rows}


def evaluate(problem: Problem, samples: Tensor) -> dict[str, float]:
    """Unsafe fraction and MMD; a sample with NaN/inf counts as a failure (unsafe, and MMD is infinite)."""
    finite = torch.isfinite(samples).all(1)
    if not bool(finite.all()):
        return {"unsafe": 1.0, "mmd": math.inf, "nonfinite": float((~finite).double().mean())}
    labels = problem.mixture.classify(samples)
    return {"unsafe": unsafe_fraction(labels, problem.unsafe), "mmd": mmd(samples, problem.reference, problem.bandwidths),
            "nonfinite": 0.0}


def run_method(problem: Problem, cfg: ToyConfig, factory: Factory) -> dict[str, Any]:
    counter = EvaluationCounter()
    start = time.perf_counter()
    samples = sample(factory(counter), list(range(cfg.samples)), (problem.dim,), problem.sigmas, sampler="heun")
    seconds = time.perf_counter() - start
    return {**evaluate(problem, samples), "evaluations_per_sample": counter.rows / cfg.samples, "seconds": seconds}


def run_rejection(problem: Problem, cfg: ToyConfig) -> dict[str, Any]:
    counter = EvaluationCounter()
    base = counter.wrap(problem.mixture)
    start = time.perf_counter()
    result = rejection_sample(lambda seeds: sample(base, list(seeds), (problem.dim,), problem.sigmas, sampler="heun"),
                              problem.is_unsafe, cfg.samples)
    seconds = time.perf_counter() - start
    return {**evaluate(problem, result.samples), "evaluations_per_sample": counter.rows / len(result.seeds),
            "seconds": seconds, "attempts": result.attempts}


def toy_record(setting: Setting, measured: dict[str, Any], dim: int, noise_floor: float,
               bank_evaluations_per_sample: float) -> Record:
    """A toy run (:func:`run_method` / :func:`run_rejection`'s dict, as :class:`RunLog` cached it) as a record;
    ``extra``: the run's other fields (its log ``key``, rejection's ``attempts``), the dimension and the noise floor."""
    metrics = {k: measured[k] for k in ("unsafe", "mmd", "nonfinite", "evaluations_per_sample")}
    extra = {**{k: v for k, v in measured.items() if k not in metrics and k != "seconds"}, "dim": dim,
             "noise_floor": noise_floor}
    return Record(setting.method, setting.knob, setting.value,
                  {**metrics, "bank_evaluations_per_sample": bank_evaluations_per_sample}, measured["seconds"], extra)


def run_dimension(dim: int, cfg: ToyConfig, log: RunLog, progress: bool = True) -> tuple[Problem, list[Record]]:
    problem = build_problem(dim, cfg)
    measured = []
    modes = ("calibrated", "substitution") + (("substitution (ratio)",) if cfg.ratio else ())
    rules = {mode: log.run(f"D={dim}|default rule v2|{mode}", lambda mode=mode: default_rule(problem, mode, cfg))
             for mode in modes}
    rule_of = {rule_method(mode): mode for mode in modes}
    runs = method_runs(problem, cfg, {mode: rule["knobs"] for mode, rule in rules.items()})
    for setting in tqdm(runs, desc=f"toy D={dim}", disable=not progress):
        key = f"D={dim}|{setting.method}|{setting.knob}={setting.value:g}"
        measured.append((setting, log.run(key, lambda: run_method(problem, cfg, setting.make))))
    measured.append((Setting("rejection", "-", 0.0), log.run(f"D={dim}|rejection", lambda: run_rejection(problem, cfg))))

    def bank_evaluations(method: str) -> float:
        if method.split(" (")[0] not in ("calibrated", "substitution"):  # the mode, whatever its knobs
            return 0.0
        trials = rules[rule_of[method]]["evaluations"] if method in rule_of else 0
        return (problem.bank_evaluations + trials) / cfg.samples

    return problem, [toy_record(s, m, dim, problem.noise_floor, bank_evaluations(s.method)) for s, m in measured]


def method_family(method: str) -> str:
    """The family a run is compared in: ``reference (s=...)`` belongs to ``reference``; a mode at the default rule's
    knobs and substitution with the classifier floor are families of their own."""
    return method if method.endswith(("default rule)", "(floor)", "(ratio)")) else method.split(" (")[0]


def best_points(records: list[dict[str, Any]], target: float = UNSAFE_TARGET) -> list[dict[str, Any]]:
    """Per (dim, method family): the lowest-MMD run with unsafe <= target; else the safest run (flagged)."""
    best = best_per_method(records, key=lambda r: (r["dim"], method_family(r["method"])), meets=lambda r: r["unsafe"] <= target,
                           cost=lambda r: r["mmd"], risk=lambda r: r["unsafe"])
    return [{**r, "family": family, "meets_target": r["unsafe"] <= target} for (_, family), r in best.items()]


def summary_markdown(records: list[dict[str, Any]], cfg: ToyConfig) -> str:
    """toy.md: the best operating point of each method per dimension, and the noise floors."""
    rows = best_points(records)
    oracle = {r["dim"]: r["mmd"] for r in records if r["method"] == "oracle"}
    lines = [f"Mixture family `{cfg.family}`. Best operating point of each method: lowest MMD among its runs with unsafe "
             f"<= {UNSAFE_TARGET:.0%} (marked *: no run reached it; the safest run is shown); `(default rule)`: the "
             "knobs picked without a judge or the test seeds (select_knobs). "
             f"{cfg.samples} samples per run, N = {cfg.negation}, "
             f"bank M = {cfg.bank}, Heun {cfg.steps} steps, seed {cfg.seed}.", ""]
    cells = []
    for r in sorted(rows, key=lambda r: (r["dim"], ORDER.index(r["family"]) if r["family"] in ORDER else 99)):
        knob = "-" if r["knob"] == "-" else f"{r['knob']}={r['value']:.3g}"
        flag = "" if r["meets_target"] else " *"
        evals = r["evaluations_per_sample"] + r.get("bank_evaluations_per_sample", 0.0)
        cells.append([str(r["dim"]), f"{r['method']}{flag}", knob, f"{r['unsafe']:.3f}", f"{r['mmd']:.4f}",
                      f"{r['mmd'] / oracle[r['dim']]:.2f}", f"{evals:.0f}", f"{r['seconds']:.1f}"])
    lines.append(markdown_table(["D", "method", "knob", "unsafe", "MMD", "MMD / oracle", "evals / sample", "seconds"], cells))
    floors = ", ".join(f"D={d}: {r['noise_floor']:.4f}" for d, r in {r["dim"]: r for r in records}.items())
    lines += ["", f"MMD between two independent exact p_safe samples of the same size (noise floor): {floors}.",
              "evals / sample for calibrated and substitution includes the amortised bank of unguided samples "
              "(and, for the default rule, its trial samples)."]
    return "\n".join(lines) + "\n"


ORDER = ["plain", "oracle", "rejection", "calibrated (default rule)", "calibrated", "substitution (default rule)",
         "substitution", "substitution (floor)", "substitution (ratio, default rule)", "substitution (ratio)",
         "calibrated (ratio)", "paper", "reference", "spell", "negative guidance"]


def plot_tradeoffs(records: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()

    dims = sorted({r["dim"] for r in records})
    fig, axes = plt.subplots(1, len(dims), figsize=(4.2 * len(dims), 3.8), squeeze=False)
    for ax, dim in zip(axes[0], dims):
        subset = [r for r in records if r["dim"] == dim]
        families: dict[str, list[dict[str, Any]]] = {}
        for r in subset:
            families.setdefault(r["method"], []).append(r)
        for name, rs in families.items():
            rs = sorted(rs, key=lambda r: r["value"])
            marker = "*" if len(rs) == 1 else "o"
            ax.plot([max(r["unsafe"], 1e-4) for r in rs], [r["mmd"] for r in rs], marker=marker, ms=5 if marker == "o" else 11,
                    label=name, lw=1)
        ax.axvline(UNSAFE_TARGET, color="grey", ls=":", lw=1)
        ax.axhline(subset[0]["noise_floor"], color="grey", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"D = {dim}")
        ax.set_xlabel("unsafe fraction (0 plotted at 1e-4)")
    axes[0][0].set_ylabel("MMD to exact p_safe")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_trajectories(problem: Problem, cfg: ToyConfig, gain: float, path: Path, n: int = 96) -> None:
    """2-D sampling trajectories with and without the calibrated correction (cf. the paper's Figure 2b)."""
    plt = pyplot()

    corrected = CorrectedDenoiser(problem.mixture, make_correction(problem.negation, "calibrated",
                                                                  calibration=problem.calibration, gain=gain))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    for ax, (title, den) in zip(axes, [("plain", problem.mixture), (f"safe denoiser (calibrated, gain {gain:g})", corrected)]):
        path_points: list[Tensor] = []
        x, _ = initial_noise(list(range(n)), (2,), float(problem.sigmas[0]))
        path_points.append(x)
        heun(den, x, problem.sigmas, callback=lambda info: path_points.append(info["x"]))
        traj = torch.stack(path_points).clamp(-2.5, 2.5)  # (steps + 1, n, 2)
        bad = problem.is_unsafe(traj[-1])
        for i in range(n):
            ax.plot(traj[:, i, 0], traj[:, i, 1], color="tab:red" if bad[i] else "tab:blue", lw=0.5, alpha=0.5)
        means = problem.mixture.means
        for k in range(means.shape[0]):
            ax.add_patch(plt.Circle((float(means[k, 0]), float(means[k, 1])), 2 * float(problem.mixture.stds[k]),
                                    fill=False, color="tab:red" if k in problem.unsafe else "tab:green", lw=1.5))
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=6, c=["tab:red" if b else "tab:blue" for b in bad], zorder=3)
        ax.set_title(f"{title}: {float(bad.double().mean()):.0%} unsafe")
        ax.set_xlim(-2.5, 2.5)
        ax.set_ylim(-2.5, 2.5)
        ax.set_aspect("equal")
    fig.suptitle("2-D mixture, red circles negated; trajectories from the same seeds")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def run_toy(cfg: ToyConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole benchmark; returns the summary that is also written to ``cfg.out``."""
    out = Path(cfg.out)
    log = RunLog(out / "runs.jsonl")
    records: list[dict[str, Any]] = []
    problems = {}
    for dim in cfg.dims:
        problems[dim], dim_records = run_dimension(dim, cfg, log, progress)
        records += [r.flat() for r in dim_records]
    summary = {"config": asdict(cfg), "records": records, "best": best_points(records)}
    write_atomic(out / "toy.json", json.dumps(summary, indent=1))
    write_atomic(out / "toy.md", summary_markdown(records, cfg))
    plot_tradeoffs(records, out / "tradeoff.png")
    if 2 in problems:
        cal = [r for r in best_points(records) if r["dim"] == 2 and r["family"] == "calibrated"]
        plot_trajectories(problems[2], cfg, cal[0]["value"] if cal else 1.0, out / "trajectories_2d.png")
    return summary


def register(subparsers: argparse._SubParsersAction) -> None:
    """``safe-denoiser bench toy`` (and ``safe-denoiser toy``, its alias)."""
    about = "Gaussian-mixture benchmark of every method against the exact safe denoiser"
    for parser in (bench_subparsers(subparsers).add_parser("toy", help=about, description=about),
                   subparsers.add_parser("toy", help="alias of `safe-denoiser bench toy`", description=about)):
        _add_arguments(parser)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ToyConfig()
    parser.add_argument("--dims", type=int, nargs="+", help=f"dimensions (default {' '.join(map(str, defaults.dims))})")
    parser.add_argument("--samples", type=int, help=f"samples per run (default {defaults.samples})")
    parser.add_argument("--negation", type=int, help=f"N, negation-set size (default {defaults.negation})")
    parser.add_argument("--bank", type=int, help=f"M, unguided samples for the calibrated mode (default {defaults.bank})")
    parser.add_argument("--steps", type=int, help=f"Heun steps (default {defaults.steps})")
    parser.add_argument("--seed", type=int, help=f"default {defaults.seed}")
    parser.add_argument("--family", choices=sorted(FAMILIES), help=f"mixture family (default {defaults.family}): "
                        "toy = 2 of 8 separated modes negated, adjacent = an arc of 2 on a ring of 12 modes 5 spreads "
                        "apart, mostly = 6 of 8 modes negated")
    parser.add_argument("--cut", choices=COVERAGE_CUTS, help=f"the bank's coverage cut (default {defaults.cut})")
    parser.add_argument("--ratio", action="store_true", default=None,
                        help="also run the fitted-ratio estimator of beta* (a classifier fitted per dimension, minutes)")
    parser.add_argument("--out", help=f"output folder (default {defaults.out})")
    parser.add_argument("--quick", action="store_true", help=f"CI-sized defaults (explicit flags still win): {QUICK}")
    parser.set_defaults(run=_main)


def _main(args: argparse.Namespace) -> int:
    settings = dict(QUICK) if args.quick else {}
    settings.update({k: v for k in ("dims", "samples", "negation", "bank", "steps", "seed", "family", "cut", "ratio", "out")
                     if (v := getattr(args, k)) is not None})
    if "dims" in settings:
        settings["dims"] = tuple(settings["dims"])
    cfg = ToyConfig(**settings)
    torch.manual_seed(cfg.seed)
    summary = run_toy(cfg)
    print(summary_markdown(summary["records"], cfg))
    print(f"wrote {cfg.out}/toy.json, toy.md, tradeoff.png" + (", trajectories_2d.png" if 2 in cfg.dims else ""))
    return 0
