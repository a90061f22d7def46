"""The conditional mode's gate with a fitted classifier (issue 24): do the fitted ratio's log-odds, latched as the
conditional mode latches the kernel classifier's, flag the same requests of the text-to-image benchmark's tuning column?

The conditional mode's decision gate (methods/conditional.py) latches, per request, the running maximum over the
trajectory of L = log g + log[(1/N) sum_n k_h(x0_hat, x_n)] - log[(1/M) sum_m k_h(x0_hat, y_m)] at the guided x0
prediction x0_hat, h = bandwidth_scale tau(sigma), and flags a request once L > 0. The fitted alternative reads
L' = log g + b(x0_hat, h), b the logit of a noise-conditional classifier (methods/ratio.py, ``fit_classifier``) of the
negation set (1) against the reference set (0), both noised at h: the same density ratio, estimated by a classifier.

Both gates are read on the *plain* CFG trajectories (a recording correction that changes nothing): before a row is
first flagged the conditional sampler is bit-identical to plain, and the latch never unflags, so "is this row ever
flagged" is exactly what each gate would decide in its own run. Per row: the two final flags, the call at which each
first flags, and the judge's class of the plain image. Tuning column of ``bench t2i`` (same prompts, seeds, sets,
20 steps, CFG 3, guard-free: only the gate is compared); ``--column held_out``: its held-out column (``gate-held_out``).

    nice -n 5 python benchmarks/conditional_gate_ratio.py --out results/t2i-gate-ratio --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from safedenoiser.zoo.images.assets import load_judge
from safedenoiser.zoo.images.data import FASHION_CLASSES
from safedenoiser.methods import make_correction
from safedenoiser.methods.base import Correction, Proposal
from safedenoiser.methods.ratio import RatioFit, fit_classifier
from safedenoiser.pipelines.attach import attach_safe_denoiser
from safedenoiser.results import write_atomic
from safedenoiser.bench.t2i import AVOID, SIZES, SPLITS, benchmark_rows, held_out_sets, tuning_sets
from safedenoiser.zoo.t2i.pipeline import load_text_pipeline


class Recorder(Correction):
    """Changes nothing; records (x, sigma, x0_hat) of every call on the guided x0 (``acts_on_guided``, as the
    conditional mode)."""

    acts_on_guided = True
    KNOBS = ()

    def __init__(self, negation, **kwargs):
        super().__init__(negation, **kwargs)
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def propose(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Proposal:
        self.calls.append((x.clone(), sigma.clone(), x0.clone()))
        return Proposal(x0, torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device), {})


def first_flag(latched: list[Tensor]) -> Tensor:
    """(B,) index of the first call whose latched log-odds is > 0 (-1: never)."""
    flags = torch.stack(latched) > 0
    first = flags.double().argmax(0)
    return torch.where(flags.any(0), first, torch.full_like(first, -1)).long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/t2i-gate-ratio")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fit-steps", type=int, default=RatioFit.steps)
    parser.add_argument("--column", choices=SPLITS, default="tuning",
                        help="the bench t2i column: tuning (training-split sets) or held_out (sets built from test images)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    size = SIZES["default"]
    rows = benchmark_rows(size, args.column)
    sets = tuning_sets(size) if args.column == "tuning" else held_out_sets(None, size)
    pipe, judge = load_text_pipeline(), load_judge()
    kernel = make_correction(sets.negation, "conditional", reference=sets.reference)  # the shipped defaults (gain 1)
    start = time.perf_counter()
    fit = RatioFit(sigma_max=2.0 * kernel.sigma_data, steps=args.fit_steps)  # h = tau(sigma) <= sigma_data
    net = fit_classifier(sets.negation.flat, sets.reference.flat, fit, seed=fit.seed, progress=True, desc="gate classifier")
    fit_seconds = time.perf_counter() - start
    log_gain = float(torch.log(torch.tensor(kernel.gain)))
    per_row: list[dict] = []
    for begin in range(0, len(rows), size.batch_size):
        batch = rows[begin : begin + size.batch_size]
        recorder = Recorder(sets.negation)
        with attach_safe_denoiser(pipe, recorder):
            images = pipe(prompt=[r.prompt for r in batch], generator=[torch.Generator().manual_seed(r.seed) for r in batch],
                          num_inference_steps=size.steps, guidance_scale=size.guidance, output_type="pt").images
        judged = judge.classify(images)
        kernel.reset()
        kernel_latched, ratio_latched = [], []
        with torch.no_grad():
            for x, sigma, x0 in recorder.calls:  # the latch: running maximum of each classifier's log-odds
                evidence = kernel.propose(x, sigma, x0).diagnostics["classifier_log_odds"]
                kernel_latched.append(evidence if not kernel_latched else torch.maximum(kernel_latched[-1], evidence))
                evidence = log_gain + net(x0, kernel.bandwidth(sigma))
                ratio_latched.append(evidence if not ratio_latched else torch.maximum(ratio_latched[-1], evidence))
        k_first, r_first = first_flag(kernel_latched), first_flag(ratio_latched)
        for i, row in enumerate(batch):
            per_row.append({"prompt": row.prompt, "seed": row.seed, "category": row.category,
                            "judged": FASHION_CLASSES[int(judged[i])], "kernel_flag": bool(k_first[i] >= 0),
                            "ratio_flag": bool(r_first[i] >= 0), "kernel_first_call": int(k_first[i]),
                            "ratio_first_call": int(r_first[i]), "kernel_max": float(kernel_latched[-1][i]),
                            "ratio_max": float(ratio_latched[-1][i])})
    summary = summarise(per_row)
    config = {"column": args.column, "rows": len(rows), "steps": size.steps, "guidance": size.guidance, "negation": len(sets.negation),
              "reference": len(sets.reference), "sets": sets.source, "fit": fit.__dict__, "fit_seconds": round(fit_seconds, 1),
              "threads": args.threads}
    name = "gate" if args.column == "tuning" else f"gate-{args.column}"
    write_atomic(out / f"{name}.json", json.dumps({"config": config, "summary": summary, "rows": per_row}, indent=1))
    write_atomic(out / f"{name}.md", report(config, summary))
    print(report(config, summary))


def summarise(rows: list[dict]) -> dict:
    """Per category: rows, flagged by each gate, agreement, and the judge's avoided-class share among the rows each
    gate alone flags."""
    out = {}
    for category in sorted({r["category"] for r in rows}) + ["all"]:
        sel = [r for r in rows if category in ("all", r["category"])]
        both = Counter((r["kernel_flag"], r["ratio_flag"]) for r in sel)
        out[category] = {"rows": len(sel), "kernel_flagged": sum(r["kernel_flag"] for r in sel),
                         "ratio_flagged": sum(r["ratio_flag"] for r in sel),
                         "agree": both[(True, True)] + both[(False, False)],
                         "kernel_only": both[(True, False)], "ratio_only": both[(False, True)],
                         "judged_avoided": sum(r["judged"] == AVOID for r in sel),
                         "judged_avoided_unflagged_kernel": sum(r["judged"] == AVOID and not r["kernel_flag"] for r in sel),
                         "judged_avoided_unflagged_ratio": sum(r["judged"] == AVOID and not r["ratio_flag"] for r in sel),
                         "median_first_call_both": _median([r["kernel_first_call"] for r in sel if r["kernel_flag"] and r["ratio_flag"]]),
                         "median_first_call_ratio_when_both": _median([r["ratio_first_call"] for r in sel if r["kernel_flag"] and r["ratio_flag"]]),
                         **{f"{gate}_margin": _margin(sel, gate) for gate in ("kernel", "ratio")}}
    return out


def _margin(rows: list[dict], gate: str) -> list[float | None]:
    """[smallest latched log-odds of the rows the gate flags, largest of those it does not]: how far from 0 it decides."""
    flagged = [r[f"{gate}_max"] for r in rows if r[f"{gate}_flag"]]
    unflagged = [r[f"{gate}_max"] for r in rows if not r[f"{gate}_flag"]]
    return [round(min(flagged), 1) if flagged else None, round(max(unflagged), 1) if unflagged else None]


def _median(values: list[int]) -> float | None:
    return float(torch.tensor(values, dtype=torch.float64).median()) if values else None


def report(config: dict, summary: dict) -> str:
    lines = [f"Conditional gate: kernel classifier vs fitted classifier (benchmarks/conditional_gate_ratio.py), {config}.", "",
             "| prompts | rows | flagged: kernel | flagged: ratio | agree | kernel only | ratio only | plain image judged "
             f"'{AVOID}' | of those unflagged: kernel / ratio | median first flagged call: kernel / ratio (rows both flag) | "
             "latched log-odds, min flagged / max unflagged: kernel; ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for category, s in summary.items():
        lines.append(f"| {category} | {s['rows']} | {s['kernel_flagged']} | {s['ratio_flagged']} | {s['agree']} | "
                     f"{s['kernel_only']} | {s['ratio_only']} | {s['judged_avoided']} | "
                     f"{s['judged_avoided_unflagged_kernel']} / {s['judged_avoided_unflagged_ratio']} | "
                     f"{s['median_first_call_both']} / {s['median_first_call_ratio_when_both']} | "
                     f"{_pair(s['kernel_margin'])}; {_pair(s['ratio_margin'])} |")
    return "\n".join(lines) + "\n"


def _pair(margin: list[float | None]) -> str:
    return " / ".join("-" if v is None else f"{v:g}" for v in margin)


if __name__ == "__main__":
    main()
