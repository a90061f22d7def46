"""beta* from a fitted density ratio on the mixture families (issue 24): the ratio rows of ``bench toy --ratio`` only.

For each family and dimension: plain, oracle, substitution at gain 1 with the fitted-ratio calibration
(methods/ratio.py; ``bench toy --ratio`` runs the whole sweeps), and substitution at the knobs the default rule picks when the fitted
classifier (not the kNN rule) calibrates and judges. Same problems, sampler and seeds as ``bench toy``; resumable
(runs.jsonl per family), tables rewritten atomically after every dimension.

``--rule-judge independent``: the rule's trials are counted by an independent judge (``methods.ratio.rule_judge``: classifier
B's two classes refitted with another seed, the MLP since the items are vectors; soft count), not by B itself. Every
trial also records the exact Bayes judge's unsafe share (``exact_unsafe``: recorded, never used by the rule).

    nice -n 10 python benchmarks/beta_ratio.py --families adjacent mostly toy --dims 2 16 64 --out results/toy-ratio
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from safedenoiser.bench.toy import (
    ToyConfig,
    build_problem,
    default_rule,
    method_runs,
    ratio_fit,
    run_method,
)
from safedenoiser.methods.ratio import rule_judge
from safedenoiser.results import RunLog, write_atomic

METHODS = ("plain", "oracle", "substitution (ratio)", "substitution (ratio, default rule)")  # ratio sweeps: gain 1 only
RULE = "substitution (ratio)"
RULE_JUDGES = ("calibration", "independent")


def run(family: str, dim: int, out: Path, publish, rule_judge_name: str = "calibration") -> list[dict]:
    """The rows of one family and dimension; ``publish(rows so far)`` after each; ``rule_judge_name``: who counts the
    rule's trials (``calibration``: classifier B itself, :func:`default_rule`; ``independent``: :func:`default_rule` with ``judge=rule_judge(negation, the MLP refit)``)."""
    cfg = ToyConfig(dims=(dim,), family=family, ratio=True)
    log = RunLog(out / family / "runs.jsonl")
    start = time.perf_counter()
    problem = build_problem(dim, cfg)
    fit_seconds = time.perf_counter() - start
    truth = torch.isin(problem.mixture.classify(problem.bank), torch.tensor(problem.unsafe))
    split = log.run(f"D={dim}|ratio split", lambda: {
        "labelled": problem.ratio.unsafe_share, "truly_negated": float(truth.double().mean()),
        "label_errors": float((problem.ratio.ratio.covered != truth).double().mean()), "build_seconds": fit_seconds})
    records = [{**split, "dim": dim, "method": "ratio split", "knob": "-", "value": 0.0}]
    rules: dict = {}
    for stage in ("sweep", "rule"):  # the default rule last: it costs a second fit and 7 x 500 trial samples
        if stage == "rule":
            if rule_judge_name == "independent":
                rules[RULE] = log.run(f"D={dim}|default rule v2, independent judge|{RULE}", lambda: default_rule(problem, RULE, cfg, judge=rule_judge(
                    problem.negation, replace(ratio_fit(cfg), net="mlp"))))["knobs"]
            else:
                rules[RULE] = log.run(f"D={dim}|default rule v2|{RULE}", lambda: default_rule(problem, RULE, cfg))["knobs"]
        for setting in method_runs(problem, cfg, rules):
            method, knob, value, factory = setting.method, setting.knob, setting.value, setting.make
            if method in METHODS and (method != "substitution (ratio)" or value == 1.0) and (stage == "rule") == method.endswith("rule)"):
                tag = "|independent judge" if stage == "rule" and rule_judge_name == "independent" else ""
                record = log.run(f"D={dim}|{method}|{knob}={value:g}{tag}", lambda f=factory: run_method(problem, cfg, f))
                records.append({**record, "dim": dim, "method": method, "knob": knob, "value": value})
                publish(records)
    return records


def table(records: list[dict]) -> str:
    lines = ["| family | D | method | knob | unsafe | MMD / oracle | seconds |", "|---|---|---|---|---|---|---|"]
    oracle = {(r["family"], r["dim"]): r["mmd"] for r in records if r["method"] == "oracle"}
    for r in records:
        if r["method"] == "ratio split":
            lines.append(f"| {r['family']} | {r['dim']} | bank labelled covered (truly negated; label errors) | - | "
                         f"{r['labelled']:.3f} ({r['truly_negated']:.3f}; {r['label_errors']:.3f}) | - | {r['build_seconds']:.0f} |")
        else:
            knob = "-" if r["knob"] == "-" else f"{r['knob']}={r['value']:g}"
            ref = oracle.get((r["family"], r["dim"]))
            lines.append(f"| {r['family']} | {r['dim']} | {r['method']} | {knob} | {r['unsafe']:.3f} | "
                         f"{'-' if ref is None else format(r['mmd'] / ref, '.2f')} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["adjacent", "mostly", "toy"])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    parser.add_argument("--out", default="results/toy-ratio")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rule-judge", choices=RULE_JUDGES, default="calibration",
                        help="who counts the default rule's trials: classifier B itself (calibration) or an MLP refit of "
                             "B's classes with another seed (independent)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    name = "-".join(args.families) + "_" + "-".join(map(str, args.dims))
    records: list[dict] = []
    header = (f"Fitted-ratio rows (benchmarks/beta_ratio.py), {ToyConfig.samples} samples per run (seeds 0-999), "
              f"N = {ToyConfig.negation}, bank M = {ToyConfig.bank}, Heun {ToyConfig.steps} steps, seed 0, "
              f"{args.threads} thread(s); the rule's trials counted by: {args.rule_judge}.\n\n")

    def publish(rows: list[dict], family: str) -> None:
        done = records + [{**r, "family": family} for r in rows]
        write_atomic(out / f"ratio_{name}.md", header + table(done))
        write_atomic(out / f"ratio_{name}.json", json.dumps(done, indent=1))

    for dim in args.dims:
        for family in args.families:
            records += [{**r, "family": family} for r in run(family, dim, out, lambda rows, f=family: publish(rows, f),
                                                             args.rule_judge)]
    print(table(records))


if __name__ == "__main__":
    main()
