"""Why the fitted ratio's row misses issue 24's MMD target on the mostly-negated mixture in D = 2 (0.0% unsafe but
2.67x the oracle's MMD): per safe component, the share, mean and spread of the samples of the oracle (the exact safe
mixture) and of bank substitution with the fitted ratio at gain 1 (the rule's pick), same seeds and sampler as
``bench toy`` (``bench.toy.ToyConfig(family="mostly", ratio=True)``, Heun).

    python benchmarks/ratio_mostly_d2.py --out results/toy-ratio-judge/d2_diagnosis.json
"""

from __future__ import annotations

import argparse
import json

import torch

from safedenoiser.bench.toy import ToyConfig, build_problem
from safedenoiser.fileio import write_json
from safedenoiser.methods import CorrectedDenoiser, make_correction
from safedenoiser.sampling import sample


def component_stats(problem, denoiser, seeds: list[int]) -> dict:
    """Samples per component and, for the safe ones, their mean and per-axis standard deviation."""
    x = sample(denoiser, seeds, (problem.dim,), problem.sigmas, sampler="heun")
    labels = problem.mixture.classify(x)
    counts = torch.bincount(labels, minlength=problem.mixture.means.shape[0]).tolist()
    safe = [k for k in range(len(counts)) if k not in problem.unsafe]
    return {"counts": counts, "safe": {k: {"mean": x[labels == k].mean(0).tolist(), "std": x[labels == k].std(0).tolist()}
                                       for k in safe}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = ToyConfig(dims=(2,), family="mostly", ratio=True)
    problem = build_problem(2, cfg)
    seeds = list(range(cfg.samples))
    ratio = CorrectedDenoiser(problem.mixture, make_correction(problem.negation, "substitution", calibration=problem.ratio,
                                                               gain=1.0))
    out = {"unsafe_components": list(problem.unsafe), "means": problem.mixture.means.tolist(),
           "component_std": float(problem.mixture.stds[0]) if hasattr(problem.mixture, "stds") else None,
           "oracle": component_stats(problem, problem.safe_mixture, seeds),
           "substitution_ratio_gain_1": component_stats(problem, ratio, seeds)}
    print(json.dumps(out))
    if args.out:
        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
