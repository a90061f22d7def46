"""The negation set a user really has, and several concepts in separate sets (issue 19, items 4 and 6).

    python benchmarks/t2i_sets.py --out results/t2i-sets --threads 1          # every setting (resumable)
    python benchmarks/t2i_sets.py --list                                      # the settings, in run order
    python benchmarks/t2i_sets.py --only neg-train-500 ref-50 --out DIR       # some of them
    python benchmarks/t2i_sets.py --report-only --out results/t2i-sets        # tables and figure from the records

The default text-to-image defence (the shipped ``fashion-t2i`` pipeline, the conditional mode at its shipped
defaults, i.e. ``make_correction(negation, "conditional", reference=reference)`` as ``generate --negation`` runs
it) against:

* the negation set's **size** (training trousers: 1 .. 5,000) and **source** (training vs test images: the test
  split has 1,000 trousers), with a reference set of 900 training images (100 per other class);
* its **noise**: a share (10%, 20%, 30%) of the items are images of other classes (drawn at random, seed 0);
* the **reference set's size** (50, 200, 900, 1,000, all 54,000 training images of the nine other classes,
  balanced), with 500 training trousers as the negation set;
* **several concepts in separate sets**: trousers and bags, each set built on its own and combined with
  :func:`safedenoiser.pipelines.negation_combine.combine_sets` (equal and unequal sizes, training and test images),
  against the bench's one set holding both.

Every set is built as a user builds it: images written as PNG files and encoded by ``negation build``'s own code
(:func:`safedenoiser.bench.t2i_sets.build_user_set`). Prompts: the held-out explicit and evasive sets
(``explicit_held_out.csv``, ``evasive_held_out.csv``: 32 + 32 rows) and all 72 neutral rows (8 per other class), each
row with its own seed from the CSV; several concepts: the bench's rows (24 explicit trouser, 24 explicit bag, 24
neutral). Metrics from ``bench/t2i.py`` (:meth:`TextToImageBench.measure`): ASR explicit / evasive, neutral
fidelity and FD, broken share (``zoo.images.evaluator.BrokenDetector``), FD of the explicit requests' images.

One record per setting (``records/<name>.json``, written atomically); a rerun skips the settings already recorded
with the same prompts, steps and guidance and refuses a record made with others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from safedenoiser import fileio
from safedenoiser.bench.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DEFAULT = 900  # 100 training images of each of the nine other classes, as bench t2i's tuning column
NEGATION_DEFAULT = 500
NOISE_SEED = 0
ALL = None  # a reference of every training image of the other classes


@dataclass
class Spec:
    """One setting: the negation set (``split``, ``size`` items, share ``noise`` of other classes) and the reference
    set (``reference`` balanced training images, None = all), or a several-concepts setting (``multi``:
    concept -> (split, size)); ``correction=False``: plain."""

    name: str
    split: str = "train"
    size: int = NEGATION_DEFAULT
    noise: float = 0.0
    reference: int | None = REFERENCE_DEFAULT
    multi: dict[str, tuple[str, int]] = field(default_factory=dict)
    one_set: bool = False  # several concepts: the bench's one set holding both (bench.t2i.multi_sets)
    balance: bool = False  # several concepts: combine_sets(balance=True), each concept weighs the same
    correction: bool = True

    @property
    def params(self) -> dict[str, Any]:
        if not self.correction:
            return {"correction": None, "multi": bool(self.multi)}
        if self.multi:
            return {"multi": {k: list(v) for k, v in self.multi.items()}, "one_set": self.one_set,
                    **({"balance": True} if self.balance else {})}
        return {"split": self.split, "size": self.size, "noise": self.noise, "reference": self.reference}


def specs() -> list[Spec]:
    """Every setting, most informative first (a run stopped early has the main points)."""
    out = [Spec("plain", correction=False), Spec("neg-train-500")]
    out += [Spec(f"neg-train-{n}", size=n) for n in (50, 100, 5000)]
    out += [Spec("neg-test-500", split="test"), Spec("noise-10", noise=0.1), Spec("noise-30", noise=0.3)]
    out += [Spec(f"ref-{n}", reference=n) for n in (50, 200, 1000)] + [Spec("ref-all", reference=ALL)]
    both = {"trouser": ("train", 500), "bag": ("train", 500)}
    out += [Spec("multi-plain", multi=both, correction=False), Spec("multi-one-set", multi=both, one_set=True),
            Spec("multi-two-sets", multi=both),
            Spec("multi-two-sets-500-50", multi={"trouser": ("train", 500), "bag": ("train", 50)}),
            Spec("multi-two-sets-50-500", multi={"trouser": ("train", 50), "bag": ("train", 500)}),
            Spec("multi-two-sets-test", multi={"trouser": ("test", 500), "bag": ("test", 500)})]
    out += [Spec(f"neg-train-{n}", size=n) for n in (10, 20, 1000)]
    out += [Spec(f"neg-test-{n}", split="test", size=n) for n in (50, 100, 1000)]
    out += [Spec("noise-10-n100", size=100, noise=0.1), Spec("noise-30-n100", size=100, noise=0.3)]
    out += [Spec(f"multi-two-sets-{a}-{b}-balanced", multi={"trouser": ("train", a), "bag": ("train", b)}, balance=True)
            for a, b in ((50, 500), (500, 50))]
    out += [Spec(f"neg-train-{n}", size=n) for n in (1, 3)] + [Spec("noise-20", noise=0.2)]
    return out


def first_per_class(rows: list[Any], count: int, exclude: str) -> list[Any]:
    """The first ``count`` rows of every intended class but ``exclude``, in file order."""
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        seen[row.intended_class] = seen.get(row.intended_class, 0) + 1
        if row.intended_class != exclude and seen[row.intended_class] <= count:
            out.append(row)
    return out


class Context:
    """The pipeline, judge, bench and prompt rows, loaded once; sets built on first use and kept."""

    def __init__(self, args: argparse.Namespace):
        from safedenoiser.zoo.images.assets import class_reference, load_judge
        from safedenoiser.zoo.images.data import load_fashion_mnist
        from safedenoiser.zoo.images.evaluator import BrokenDetector
        from safedenoiser.bench.t2i import AVOID, SIZES, TextToImageBench, multi_rows
        from safedenoiser.zoo.t2i.pipeline import load_text_pipeline
        from safedenoiser.zoo.t2i.prompts import shipped_prompts

        self.args = args
        self.size = replace(SIZES["default"], steps=args.steps, guidance=args.guidance)
        self.data = {"train": load_fashion_mnist("train"), "test": load_fashion_mnist("test")}
        self.pipe, self.judge = load_text_pipeline(), load_judge()
        broken = BrokenDetector.calibrate(self.judge, self.data["train"].images[::6], self.data["test"].images[::5])
        neutral = first_per_class(shipped_prompts("neutral"), args.neutral_per_class, exclude=AVOID)
        self.rows = {"single": (shipped_prompts("explicit_held_out")[: args.explicit]
                                + shipped_prompts("evasive_held_out")[: args.evasive] + neutral),
                     "multi": multi_rows(self.size)}
        self.bench = TextToImageBench(self.pipe, self.judge, self.rows, self.size,
                                      class_reference(self.judge, exclude=AVOID).stats, broken, progress=True)
        self.broken = broken
        self.cache: dict[tuple, Any] = {}
        self.git = git_state()

    def signature(self, kind: str) -> dict[str, Any]:
        rows = self.rows[kind]
        digest = hashlib.sha256(json.dumps([[r.prompt, r.seed, r.category, r.intended_class] for r in rows]).encode())
        return {"steps": self.size.steps, "guidance": self.size.guidance, "rows": digest.hexdigest()[:16],
                "images": {c: sum(r.category == c for r in rows) for c in ("explicit", "evasive", "neutral")}}

    def _cached(self, key: tuple, build: Any) -> Any:
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]

    def negation(self, split: str, cls: str, size: int, noise: float) -> tuple[Any, dict[str, Any]]:
        from safedenoiser.zoo.images.data import FASHION_CLASSES
        from safedenoiser.bench.t2i_sets import build_user_set, describe, noisy_class_set

        def build():
            drawn = noisy_class_set(self.data[split], FASHION_CLASSES.index(cls), size, noise, seed=NOISE_SEED)
            built = build_user_set(drawn.images, "negation", batch_size=256)
            counts = torch.bincount(drawn.labels, minlength=len(FASHION_CLASSES)).tolist()
            return built, {**describe(built), "what": drawn.description,
                           "labels": {FASHION_CLASSES[c]: k for c, k in enumerate(counts) if k}}

        return self._cached(("negation", split, cls, size, noise), build)

    def reference(self, exclude: tuple[str, ...], total: int | None) -> tuple[Any, dict[str, Any]]:
        from safedenoiser.zoo.images.data import FASHION_CLASSES
        from safedenoiser.bench.t2i_sets import balanced_set, build_user_set, describe

        def build():
            drawn = balanced_set(self.data["train"], [FASHION_CLASSES.index(c) for c in exclude], total)
            built = build_user_set(drawn.images, "reference", batch_size=1024)
            return built, {**describe(built), "what": drawn.description}

        return self._cached(("reference", exclude, total), build)


def git_state() -> dict[str, Any]:
    """Commit, uncommitted changes, and the sha256 of the conditional mode's source as imported by this process (taken
    once at start: other sessions may edit the file while a run goes on; the process keeps what it imported)."""

    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    from safedenoiser.methods import conditional as module

    conditional = Path(module.__file__)
    return {"commit": run("git", "rev-parse", "--short", "HEAD"),
            "dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no")),
            "conditional_py_sha256": hashlib.sha256(conditional.read_bytes()).hexdigest()[:16] if conditional.is_file() else None}


def measure(ctx: Context, spec: Spec) -> dict[str, Any]:
    """Build the sets of ``spec``, generate its rows with the default conditional mode (or plain) and measure."""
    from safedenoiser.methods import make_correction
    from safedenoiser.pipelines.negation_combine import combine_sets
    from safedenoiser.bench.t2i import AVOID, SECOND, T2ISetting, multi_sets

    kind = "multi" if spec.multi else "single"
    rows = ctx.rows[kind]
    sets: dict[str, Any] = {}
    start = time.time()
    factory = None
    if spec.correction:
        if spec.one_set:
            bench_sets = multi_sets(ctx.size)
            negation, reference = bench_sets.negation, bench_sets.reference
            sets["negation"] = {"items": len(negation), "content_hash": negation.content_hash, "what": bench_sets.source}
            sets["reference"] = {"items": len(reference), "content_hash": reference.content_hash}
        elif spec.multi:
            parts = {c: ctx.negation(split, c, n, 0.0) for c, (split, n) in spec.multi.items()}
            negation = combine_sets({c: p[0] for c, p in parts.items()}, balance=spec.balance)
            sets["negation"] = {"items": len(negation), "content_hash": negation.content_hash,
                                "parts": {c: p[1] for c, p in parts.items()}}
            reference, sets["reference"] = ctx.reference((AVOID, SECOND), ctx.size.reference_per_class * 8)
        else:
            negation, sets["negation"] = ctx.negation(spec.split, AVOID, spec.size, spec.noise)
            reference, sets["reference"] = ctx.reference((AVOID,), spec.reference)
        correction = make_correction(negation, "conditional", reference=reference)  # shipped defaults
        sets["correction"] = {k: v for k, v in correction.config.items() if isinstance(v, (int, float, str, bool))}
        factory = lambda: correction  # noqa: E731
    build_seconds = time.time() - start
    load_before = os.getloadavg()[0]
    start = time.time()
    images = ctx.bench.generate(T2ISetting(spec.name, "-", None, factory), rows)
    seconds = time.time() - start
    metrics = ctx.bench.measure(rows, images)
    counts = {c: sum(r.category == c for r in rows) for c in ("explicit", "evasive", "neutral")}
    for name in sorted({r.intended_class for r in rows if r.category == "explicit"}):
        counts[f"explicit_{name}"] = sum(r.category == "explicit" and r.intended_class == name for r in rows)
    return {"name": spec.name, "kind": kind, "params": spec.params, "signature": ctx.signature(kind), "sets": sets,
            "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
            "counts": counts, "seconds_build": round(build_seconds, 1), "seconds_generate": round(seconds, 1),
            "seconds_per_image": round(seconds / len(rows), 3), "load_average": [round(load_before, 2),
                                                                                  round(os.getloadavg()[0], 2)],
            "threads": torch.get_num_threads(), "git": ctx.git,
            "command": " ".join(["python benchmarks/t2i_sets.py", *sys.argv[1:]])}


# -- report ---------------------------------------------------------------------------------------------------------
def _pct(record: dict[str, Any], metric: str, count: str | None = None) -> str:
    value = record["metrics"].get(metric)
    if value is None:
        return "-"
    n = record["counts"].get(count) if count else None
    return f"{100 * value:.1f}%" + (f" ({round(value * n)}/{n})" if n else "")


def _num(record: dict[str, Any], metric: str) -> str:
    value = record["metrics"].get(metric)
    return "-" if value is None else f"{value:.1f}"


def _set_label(record: dict[str, Any]) -> tuple[str, str]:
    p = record["params"]
    if p.get("correction", True) is None:
        return "none (plain)", "-"
    ref = "all (54,000)" if p.get("reference", 0) is None else f"{p['reference']:,}"
    return f"{p['split']} {p['size']:,}" + (f", noise {p['noise']:.0%}" if p["noise"] else ""), ref


def single_table(records: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["setting", "negation set", "reference", "ASR explicit (held-out)", "ASR evasive (held-out)", "neutral fidelity",
         "neutral FD", "broken (all images)", "FD explicit", "s / image", "load"],
        ([r["name"], *_set_label(r), _pct(r, "asr_explicit", "explicit"), _pct(r, "asr_evasive", "evasive"),
          _pct(r, "fidelity", "neutral"), _num(r, "fd"), _pct(r, "broken"), _num(r, "fd_explicit"),
          f"{r['seconds_per_image']:.2f}", f"{r['load_average'][0]:.1f}"] for r in records))


def multi_table(records: list[dict[str, Any]]) -> str:
    def sets(r: dict[str, Any]) -> str:
        p = r["params"]
        if p.get("correction", True) is None:
            return "none (plain)"
        if p["one_set"]:
            return "one set: 500 train trousers + 500 train bags (bench)"
        concepts = sorted(p["multi"].items(), key=lambda kv: kv[0] != "trouser")  # trousers first
        return ("two sets: " + " + ".join(f"{n} {s} {c}s" for c, (s, n) in concepts)
                + (", balanced (each concept weighs the same)" if p.get("balance") else ""))

    return markdown_table(
        ["setting", "negation", "ASR trouser", "ASR bag", "neutral fidelity (other 8 classes)", "broken", "s / image"],
        ([r["name"], sets(r), _pct(r, "asr_trouser", "explicit_trouser"), _pct(r, "asr_bag", "explicit_bag"),
          _pct(r, "fidelity", "neutral"), _pct(r, "broken"), f"{r['seconds_per_image']:.2f}"] for r in records))


CURVE_METRICS = (("asr_explicit", "ASR explicit", "tab:red"), ("asr_evasive", "ASR evasive", "tab:orange"),
                 ("fidelity", "neutral fidelity", "tab:green"), ("broken", "broken", "tab:gray"))


def curves(records: dict[str, dict[str, Any]]) -> dict[str, list[tuple[float, dict[str, Any], str]]]:
    """(x, record, line) per panel: negation size (train and test lines), noise (500 and 100 items), reference size."""
    single = [r for r in records.values() if r["kind"] == "single" and r["params"].get("correction", True) is not None]
    p = lambda r: r["params"]  # noqa: E731
    out: dict[str, list] = {"negation set size (trousers)": [], "share of items from other classes": [],
                            "reference set size (allowed images)": []}
    for r in single:
        if p(r)["noise"] == 0 and p(r)["reference"] == REFERENCE_DEFAULT:
            out["negation set size (trousers)"].append((p(r)["size"], r, f"{p(r)['split']} images"))
        if p(r)["split"] == "train" and p(r)["reference"] == REFERENCE_DEFAULT and p(r)["size"] in (100, 500):
            out["share of items from other classes"].append((100 * p(r)["noise"], r, f"{p(r)['size']} items"))
        if p(r)["split"] == "train" and p(r)["noise"] == 0 and p(r)["size"] == NEGATION_DEFAULT:
            out["reference set size (allowed images)"].append((p(r)["reference"] or 54_000, r, "train images"))
    return out


def plot(records: dict[str, dict[str, Any]], path: Path) -> None:
    """Three columns (negation size, noise, reference size); top: neutral fidelity, bottom: ASRs and broken share."""
    from safedenoiser.results import pyplot, save_figure

    plt = pyplot()
    panels = curves(records)
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), sharex="col")
    plain = records.get("plain")
    styles = ["-", "--", ":"]
    for col, (xlabel, points) in enumerate(panels.items()):
        lines = list(dict.fromkeys(line for _, _, line in points))
        for metric, label, colour in CURVE_METRICS:
            ax = axes[0 if metric == "fidelity" else 1, col]
            for style, line in zip(styles, lines):
                mine = sorted(((x, r) for x, r, ln in points if ln == line), key=lambda xr: xr[0])
                ys = [100 * r["metrics"][metric] if r["metrics"].get(metric) is not None else math.nan for _, r in mine]
                ax.plot([x for x, _ in mine], ys, marker="o", color=colour, linestyle=style, markersize=4,
                        label=f"{label} ({line})" if len(lines) > 1 else label)
        if plain is not None:
            axes[0, col].axhline(100 * plain["metrics"]["fidelity"], color="black", alpha=0.5, linewidth=1,
                                 linestyle="-.", label="plain")
        axes[0, col].set_ylabel("neutral fidelity (%)")
        axes[1, col].set_ylabel("% of images")
        axes[1, col].set_xlabel(xlabel)
        highest = max((100 * r["metrics"][m] for _, r, _ in points for m in ("asr_explicit", "asr_evasive", "broken")
                       if r["metrics"].get(m) is not None), default=0.0)
        axes[1, col].set_ylim(-0.5, max(10.0, 1.05 * highest))
        if highest > 20:  # a set too small to act: linear up to 10%, logarithmic above
            axes[1, col].set_yscale("symlog", linthresh=10)
        for ax in axes[:, col]:
            if "size" in xlabel:
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6.5)
    if plain is not None:
        fig.text(0.5, 0.005, f"plain: ASR explicit {100 * plain['metrics']['asr_explicit']:.0f}%, evasive "
                 f"{100 * plain['metrics']['asr_evasive']:.1f}%, broken {100 * plain['metrics']['broken']:.1f}%",
                 ha="center", fontsize=8)
    fig.suptitle("fashion-t2i, conditional mode (shipped defaults): held-out explicit / evasive prompts, neutral prompts",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def report(out: Path) -> str:
    records = {}
    for path in sorted((out / "records").glob("*.json")):
        record = json.loads(path.read_text())
        records[record["name"]] = record
    order = [s.name for s in specs()]
    ordered = sorted(records.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    single = [r for r in ordered if r["kind"] == "single"]
    multi = [r for r in ordered if r["kind"] == "multi"]
    single.sort(key=lambda r: (r["params"].get("correction", True) is not None, r["params"].get("split", ""),
                               r["params"].get("noise", 0), r["params"].get("size", 0), r["params"].get("reference") or 10**9))
    parts = ["# The negation set a user really has: `benchmarks/t2i_sets.py`", ""]
    if single:
        first = single[0]
        parts += [f"Images per setting: {first['signature']['images']}; {first['signature']['steps']} steps, CFG "
                  f"{first['signature']['guidance']}; threads {first['threads']}; commit {first['git']['commit']}"
                  f"{' + uncommitted changes' if first['git']['dirty'] else ''}.", "",
                  "ASR columns: held-out explicit / evasive prompts; fidelity and FD: neutral prompts; broken: all "
                  "images of the setting. Load: the machine's 1-minute load average when the setting started.", "",
                  single_table(single), ""]
        if len(single) > 1:
            plot(records, out / "curves.png")
            parts += ["![curves](curves.png)", ""]
    if multi:
        parts += ["## Several concepts: trousers and bags", "",
                  f"Images per setting: {multi[0]['signature']['images']} (explicit: trouser and bag prompts); "
                  "reference: 100 training images of each of the 8 other classes.", "", multi_table(multi), ""]
        hashes = {r["name"]: r["sets"].get("negation", {}).get("content_hash") for r in multi}
        if hashes.get("multi-one-set") and hashes.get("multi-one-set") == hashes.get("multi-two-sets"):
            parts += ["`multi-two-sets` (two sets built separately with `negation build`'s code, combined) holds "
                      "exactly the data of `multi-one-set` (same content hash).", ""]
    text = "\n".join(parts)
    fileio.write_text(out / "results.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/t2i-sets")
    parser.add_argument("--only", nargs="+", default=None, help="setting names (see --list)")
    parser.add_argument("--list", action="store_true", help="print the settings and stop")
    parser.add_argument("--report-only", action="store_true", help="write results.md and curves.png from the records")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--explicit", type=int, default=32, help="held-out explicit rows")
    parser.add_argument("--evasive", type=int, default=32, help="held-out evasive rows")
    parser.add_argument("--neutral-per-class", type=int, default=8, help="neutral rows per other class (at most 8)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    todo = specs()
    if args.list:
        for spec in todo:
            print(spec.name, spec.params)
        return 0
    out = Path(args.out)
    if not args.report_only:
        names = {s.name for s in todo}
        unknown = [n for n in args.only or [] if n not in names]
        if unknown:
            raise SystemExit(f"unknown setting(s) {', '.join(unknown)}; see --list")
        if args.only:
            todo = [s for s in todo if s.name in args.only]
        torch.set_num_threads(args.threads)
        ctx = Context(args)
        (out / "records").mkdir(parents=True, exist_ok=True)
        for spec in todo:
            path = out / "records" / f"{spec.name}.json"
            kind = "multi" if spec.multi else "single"
            if path.is_file():
                done = json.loads(path.read_text())
                if done.get("signature") != ctx.signature(kind):
                    raise SystemExit(f"{path} was measured with other prompts, steps or guidance "
                                     f"({done.get('signature')}); use another --out or delete it")
                print(f"{spec.name}: done, skipped")
                continue
            record = measure(ctx, spec)
            fileio.write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
            m = record["metrics"]
            print(f"{spec.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if v is not None)
                  + f" ({record['seconds_generate']:.0f} s)", flush=True)
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
