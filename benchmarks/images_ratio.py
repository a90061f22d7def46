"""beta* from a fitted density ratio on images (issue 24): the ratio rows of ``bench images uncond --ratio`` only.

Same model, negation set (500 training trousers), seeds (0..n-1), bank (512 samples on seeds 1,000,000..), Heun 12
steps, judge and reference as ``safe-denoiser bench images uncond``. Rows: plain; ``substitution-ratio`` (first half
of the steps) and ``substitution-all-ratio`` (every step) at their gains; ``substitution-ratio-rule``, the
knobs ``select_knobs`` picks when the fitted classifier calibrates and judges (trial samples on seeds 3,000,000..; the
judge's view of each candidate's trials is recorded, never used); rejection sampling with the judge. The classifier
sees the flattened images only. Resumable (``runs.jsonl``: a row already logged is not recomputed; the fits are
cached under ``<out>/cache``); the table is rewritten after every row, next to the kNN rows of ``--knn`` (same seeds).
``--first-seed S`` measures on seeds S..S+n-1 instead (rows logged under the seed range, tables
``results-seeds-<first>-<last>.{md,json}``, no kNN rows); the bank split and the default rule's pick do not depend on
the test seeds and are shared.
``--rule-windows`` / ``--rule-judge`` choose the default rule's candidates and counter (default: both windows, the
independent conv judge; ``--rule-windows half --rule-judge calibration`` is the first version, whose record and tables
keep their old names; other choices are logged and tabled under their own names, ``...-rule-<judge>-<windows>``).

    nice -n 5 python benchmarks/images_ratio.py --out results/images-ratio --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch

from safedenoiser.bench.images import BANK_SEED, RULE_SEED, SIZES, class_benchmark_setup, class_measure
from safedenoiser.zoo.images.common import denoiser_evaluations, edm_sigmas, generate
from safedenoiser.zoo.images.data import FASHION_CLASSES
from safedenoiser.bench.harness import Benchmark, rejection_row
from safedenoiser.bench.records import Setting
from safedenoiser.bench.images_ratio import (RATIO_SWEEPS, RULE_METHOD, bank_split, image_ratio_fit, ratio_calibration,
                                       ratio_rule, ratio_settings, rule_candidates, rule_setting)
from safedenoiser.methods.ratio import RatioFit
from safedenoiser.results import RunLog, write_atomic

KNN_METHODS = ("plain", "substitution", "substitution-all", "substitution-rule", "substitution-fixedcut", "rejection")


def table(records: list[dict], knn: list[dict]) -> str:
    lines = ["| source | method | knob | 'trouser' rate | FD | precision | recall | seconds |", "|---|---|---|---|---|---|---|---|"]
    for source, rows in (("ratio (this run)", records), ("kNN (`bench images uncond`)", knn)):
        for r in rows:
            knob = "-" if r["value"] is None else f"{r['knob']}={r['value']:g}"
            lines.append(f"| {source} | {r['method']} | {knob} | {100 * r['unsafe']:.1f}% | {r['fd']:.2f} | "
                         f"{r['precision']:.3f} | {r['recall']:.3f} | {r.get('seconds', float('nan')):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/images-ratio")
    parser.add_argument("--samples", type=int, default=SIZES["default"].samples)
    parser.add_argument("--first-seed", type=int, default=0, help="test seeds first..first+samples-1")
    parser.add_argument("--bank", type=int, default=SIZES["default"].bank)
    parser.add_argument("--steps", type=int, default=SIZES["default"].steps)
    parser.add_argument("--knn", default="results/images/uncond/results.json", help="the kNN rows to compare with")
    parser.add_argument("--no-rule", action="store_true", help="skip the default rule (7 x bank/4 trial samples)")
    parser.add_argument("--label-cut", type=float, default=RatioFit.label_cut,
                        help="the classifier fit's bank-labelling cut (RatioFit.label_cut); use its own --out")
    parser.add_argument("--rule-windows", default="half,all",
                        help="the rule's window candidates, comma-separated among half,all (rule_candidates)")
    parser.add_argument("--rule-judge", choices=("conv", "calibration"), default="conv",
                        help="who counts the rule's covered trial samples: an independent conv classifier (soft count) or "
                             "the calibration's own classifier (first version)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    size = SIZES["default"]
    size = type(size)(args.samples, args.steps, args.bank, size.negation, size.sweeps)
    log = RunLog(out / "runs.jsonl")
    evaluator, model, label, negation, reference = class_benchmark_setup("uncond", "the unconditional Fashion-MNIST model",
                                                                          "trouser", size)
    sigmas = edm_sigmas(size.steps)
    fit = image_ratio_fit(sigmas, label_cut=args.label_cut)
    windows = tuple(w.strip() for w in args.rule_windows.split(",") if w.strip())
    rule_candidates(windows)  # refuses unknown windows before any work
    seeds = list(range(args.first_seed, args.first_seed + size.samples))
    prefix, name = ("", "results") if args.first_seed == 0 else \
        (f"seeds {seeds[0]}..{seeds[-1]}|", f"results-seeds-{seeds[0]}-{seeds[-1]}")
    first_version = windows == ("half",) and args.rule_judge == "calibration"
    rule_tag = "" if first_version else f"-rule-{args.rule_judge}-{'+'.join(windows)}"
    rule_key = "default rule" + ("" if first_version else f"|windows={'+'.join(windows)}|judge={args.rule_judge}")
    name += rule_tag
    bench = Benchmark("uncond", seeds, size.steps, class_measure(evaluator, label, reference))
    knn_path = Path(args.knn)
    knn = [r for r in json.loads(knn_path.read_text())["rows"] if r["method"] in KNN_METHODS] \
        if knn_path.is_file() and not prefix else []
    config = {"samples": size.samples, "seeds": f"{seeds[0]}..{seeds[-1]}", "bank": size.bank, "bank_seeds": f"{BANK_SEED}..",
              "steps": size.steps, "negation": len(negation), "threads": args.threads, "label_cut": args.label_cut,
              "rule_windows": "+".join(windows), "rule_judge": args.rule_judge}
    records: list[dict] = []

    def publish() -> None:
        split = log.records.get("ratio split")
        classes = log.records.get("ratio split classes", {}).get("covered_not_judged")
        head = (f"Fitted-ratio rows (benchmarks/images_ratio.py), config {config}.\n\n"
                + (f"Bank split by the classifier: {json.dumps({k: v for k, v in split.items() if k != 'key'})}\n\n" if split else "")
                + (f"Judge's classes of the bank samples labelled covered but not judged trousers: {classes}\n\n" if classes else ""))
        rule = log.records.get(rule_key)
        if rule:
            head += (f"Default rule (ratio; windows {'+'.join(windows)}, counted by the {args.rule_judge} classifier) trials: "
                     + "; ".join(f"{t['knobs']}: covered {t['covered']:.3f}"
                                 + (f" (calibration's classifier {t['covered_by_calibration']:.3f})" if "covered_by_calibration" in t else "")
                                 + f" (judge {t.get('judged', float('nan')):.3f}), mmd {t['mmd']:.4g}" for t in rule["trials"])
                     + f" -> {rule['knobs']}\n\n")
        write_atomic(out / f"{name}.md", head + table(records, knn))
        write_atomic(out / f"{name}.json", json.dumps({"config": config, "split": split, "rule": rule, "rows": records,
                                                       "knn": knn}, indent=1))

    def run(key: str, setting_or_fn) -> None:
        record = log.run(prefix + key, (lambda: bench.run(setting_or_fn).as_dict()) if isinstance(setting_or_fn, Setting) else setting_or_fn)
        records.append({k: v for k, v in record.items() if k != "key"})
        publish()

    plain_samples: dict[str, torch.Tensor] = {}

    def plain_row() -> dict:
        row = bench.run(Setting("plain", "-", None, lambda: model)).as_dict()
        plain_samples["plain"] = bench.samples["plain:None"]
        return row

    run("plain", plain_row)
    start = time.perf_counter()
    bank = generate(model, list(range(BANK_SEED, BANK_SEED + size.bank)), size.steps, desc="calibration bank")
    calibration = ratio_calibration(bank, negation, sigmas, cache_dir=out / "cache", fit=fit)
    log.run("ratio split", lambda: {**bank_split(calibration, evaluator.classify(bank) == label),
                                            "build_seconds": round(time.perf_counter() - start, 1)})
    judged = evaluator.classify(bank)
    log.run("ratio split classes", lambda: {"covered_not_judged": dict(Counter(  # what the classifier over-labels
        FASHION_CLASSES[int(c)] for c in judged[calibration.ratio.covered & (judged != label)]))})
    for setting in ratio_settings(model, negation, calibration, sigmas, RATIO_SWEEPS):
        run(f"{setting.method}|gain={setting.value:g}", setting)
    if not args.no_rule:
        rule = log.run(rule_key, lambda: {**asdict(ratio_rule(model, negation, bank, sigmas, size.steps, RULE_SEED,
                                                              judge=lambda x: evaluator.classify(x) == label,
                                                              cache_dir=out / "cache", fit=fit, windows=windows,
                                                              independent_judge=args.rule_judge == "conv"))})
        run(f"{RULE_METHOD}|{rule['knobs']}", rule_setting(model, negation, calibration, sigmas, rule["knobs"]))

    def rejection() -> dict:
        plain = plain_samples.get("plain")
        if plain is None:
            plain = generate(model, seeds, size.steps, desc="plain (for rejection)")
        return rejection_row(bench, lambda s: generate(model, list(s), size.steps, progress=False),
                             lambda x: evaluator.classify(x) == label, denoiser_evaluations(size.steps), plain).as_dict()

    run("rejection", rejection)
    print(table(records, knn))


if __name__ == "__main__":
    main()
