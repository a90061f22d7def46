"""How much of the unconditional benchmark's gap to rejection sampling comes from the bank's coverage rule?

    python benchmarks/coverage_cut.py --out results/images/coverage

The calibration splits the bank into covered / not covered by the negation set with a judge-free rule (the share of
negation items among a bank sample's k nearest neighbours in negation set + bank, against a cut). This script
compares the shipped rule (k = 20, cut N / (2 (N + M))) with the fixed-point cut (the same midpoint with the
estimated unsafe share in place of 1: N / (2 (N + M pi_u)), iterated; ``Calibration.from_bank(cut="fixed-point")``)
and two stricter fixed cuts,
by what the judge says the covered samples are, and by bank substitution (gain 1; first half of the steps and every
step) on the benchmark's seeds. The stricter cuts are chosen by hand, looking at the judge: they measure the room
left, they are not a rule.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from safedenoiser import fileio
from safedenoiser.zoo.images.assets import NEGATED_CLASS
from safedenoiser.bench.images import BANK_SEED, HALF_WINDOW, SIZES, class_benchmark_setup, class_measure
from safedenoiser.zoo.images.common import edm_sigmas, generate
from safedenoiser.zoo.images.data import FASHION_CLASSES
from safedenoiser.methods import Calibration, CorrectedDenoiser, Window, make_correction
from safedenoiser.methods.calibration import coverage_cut, fixed_point_cut, negation_share


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/images/coverage")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = SIZES["default"]
    judge, model, label, negation, reference = class_benchmark_setup("uncond", "the unconditional Fashion-MNIST model",
                                                                     NEGATED_CLASS, size)
    measure = class_measure(judge, label, reference)
    bank_images = generate(model, list(range(BANK_SEED, BANK_SEED + size.bank)), size.steps, desc="bank")
    bank, labels = bank_images.flatten(1), judge.classify(bank_images)
    negated = labels == label
    sigmas = edm_sigmas(size.steps)
    windows = {"first half": Window.from_step_fractions(sigmas, *HALF_WINDOW), "every step": None}
    seeds = list(range(size.samples))
    rules = {"shipped (k 20, N/(2(N+M)))": (20, None), "fixed point (k 20; `cut=\"fixed-point\"`)": (20, "self"),
             "fixed cut 0.5, k 10 (by hand)": (10, 0.5), "fixed cut 0.7, k 5 (by hand)": (5, 0.7)}
    rows = []
    for name, (k, rule) in rules.items():
        share = negation_share(bank, negation, k)
        cut = coverage_cut(len(negation), len(bank)) if rule is None else (
            fixed_point_cut(share, len(negation)) if rule == "self" else rule)
        covered = share >= cut
        calibration = Calibration(bank[~covered], float(covered.double().mean()), bank=bank, bank_size=len(bank),
                                  neighbours=k)
        others = {FASHION_CLASSES[c]: int(((labels == c) & covered).sum()) for c in range(10)
                  if c != label and int(((labels == c) & covered).sum())}
        row = {"rule": name, "cut": round(cut, 3), "covered": float(covered.double().mean()),
               "negated_caught": f"{int((covered & negated).sum())}/{int(negated.sum())}", "others_covered": others}
        for where, window in windows.items():
            den = CorrectedDenoiser(model, make_correction(negation, "substitution", calibration=calibration, gain=1.0,
                                                           window=window))
            result = measure(generate(den, seeds, size.steps, desc=f"{name}, {where}"), seeds)
            row[where] = {"unsafe": result.unsafe, "fd": result.fd}
        rows.append(row)
    result = {"samples": size.samples, "steps": size.steps, "bank": size.bank, "negation": size.negation,
              "bank_negated_by_judge": float(negated.double().mean()), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_text(out / "coverage.json", json.dumps(result, indent=2))
    lines = ["| coverage rule | cut | bank covered | trousers caught (judge) | other classes covered (judge) | "
             "substitution, first half: trousers / FD | every step: trousers / FD |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        others = ", ".join(f"{k} {v}" for k, v in sorted(r["others_covered"].items(), key=lambda kv: -kv[1]))
        cells = [f"{r[w]['unsafe']:.1%} / {r[w]['fd']:.2f}" for w in windows]
        lines.append(f"| {r['rule']} | {r['cut']} | {r['covered']:.1%} | {r['negated_caught']} | {others} | "
                     + " | ".join(cells) + " |")
    fileio.write_text(out / "coverage.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
