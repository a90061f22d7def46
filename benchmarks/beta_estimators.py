"""Which estimate of beta* survives adjacent and mostly-negated content? (issue 15, item 1)

Runs the substitution update x0' = x0 + r (E_safe - E_unsafe) at gain 1 with four estimates of the posterior
r = beta* / (1 + beta*) on the toy benchmark's mixture families, against the exact safe denoiser (oracle):

* ``kde, kNN split``   the shipped estimate: kernel densities at bandwidth sigma, bank split by the kNN rule;
* ``kde, exact split`` the same with the bank split by the true component labels (isolates the split's error);
* ``kde, floor h0``    densities at the wider bandwidth sqrt(sigma^2 + h0^2) (kernel means stay at sigma), exact split;
* ``kde + floor``      the shipped ``floor="share"``: r raised to the soft kNN coverage rule at the predicted x0
                       (kNN split, nothing exact);
* ``axis, h0``         r from the projection of x0 on the local unsafe axis E_u - E_s (kernel means at the floored
                       bandwidth), turned into a posterior by a logistic of (proj - 1/2) |axis|^2 / h^2; exact split.

    python benchmarks/beta_estimators.py --families adjacent mostly --dims 16 64 256 --out results/toy-estimators
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import Tensor

from safedenoiser.bench.toy import ToyConfig, build_problem, run_method
from safedenoiser.methods import Calibration, CorrectedDenoiser, make_correction
from safedenoiser.methods.base import Correction, Proposal
from safedenoiser.results import RunLog, write_atomic


class FlooredSubstitution(Correction):
    """Substitution with r from kernel densities at h = sqrt(sigma^2 + h0^2) (``axis=False``) or from the
    projection of x0 on the local axis between the kernel means at h (``axis=True``)."""

    def __init__(self, negation, calibration: Calibration, h0: float, axis: bool):
        super().__init__(negation)
        self.calibration, self.h0, self.axis = calibration, h0, axis

    def propose(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Proposal:
        share = self.calibration.unsafe_share
        log_odds = math.log(share) - math.log1p(-share)
        h = torch.sqrt(sigma**2 + self.h0**2)
        near_u, near_s = self.negation.moments(x, sigma), self.calibration.safe_moments(x, sigma, with_mean=True)
        wide_u, wide_s = self.negation.moments(x, h), self.calibration.safe_moments(x, h, with_mean=True)
        if self.axis:
            axis = wide_u.mean - wide_s.mean  # (B, D)
            length2 = axis.pow(2).sum(1).clamp_min(1e-12)
            projection = ((x0 - wide_s.mean) * axis).sum(1) / length2
            r = torch.sigmoid((projection - 0.5) * length2 / h**2 + log_odds)
        else:
            r = torch.sigmoid(log_odds + wide_u.log_mass - math.log(len(self.negation))
                              - wide_s.log_mass + math.log(self.calibration.safe_bank.shape[0]))
        return Proposal(x0 + r[:, None] * (near_s.mean - near_u.mean), r > 0, {"weight": r})


def estimators(problem, h0s):
    labels = problem.mixture.classify(problem.bank)
    unsafe = torch.isin(labels, torch.tensor(problem.unsafe))
    exact = Calibration(problem.bank[~unsafe], float(unsafe.double().mean()))
    neg = problem.negation
    runs = {"oracle": lambda: problem.safe_mixture,
            "kde, kNN split": lambda: CorrectedDenoiser(problem.mixture, make_correction(neg, "substitution", calibration=problem.calibration)),
            "kde, exact split": lambda: CorrectedDenoiser(problem.mixture, make_correction(neg, "substitution", calibration=exact)),
            "kde + floor (kNN split)": lambda: CorrectedDenoiser(problem.mixture, make_correction(
                neg, "substitution", calibration=problem.calibration, floor="share"))}
    for h0 in h0s:
        runs[f"kde, floor h0={h0:g}"] = lambda h0=h0: CorrectedDenoiser(problem.mixture, FlooredSubstitution(neg, exact, h0, False))
        runs[f"axis, h0={h0:g}"] = lambda h0=h0: CorrectedDenoiser(problem.mixture, FlooredSubstitution(neg, exact, h0, True))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["adjacent", "mostly"])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--h0", type=float, nargs="+", default=[0.15, 0.3])
    parser.add_argument("--out", default="runs/toy-estimators")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    log = RunLog(out / "runs.jsonl")
    lines = ["| family | D | estimate of r | unsafe | MMD / oracle |", "|---|---|---|---|---|"]
    for family in args.families:
        for dim in args.dims:
            cfg = ToyConfig(dims=(dim,), family=family)
            problem = build_problem(dim, cfg)
            results = {name: log.run(f"{family}|D={dim}|{name}", lambda f=factory: run_method(problem, cfg, lambda counter: f()))
                       for name, factory in estimators(problem, args.h0).items()}
            for name, r in results.items():
                lines.append(f"| {family} | {dim} | {name} | {r['unsafe']:.3f} | {r['mmd'] / results['oracle']['mmd']:.2f} |")
    table = "\n".join(lines) + "\n"
    write_atomic(out / "estimators.md", f"Substitution at gain 1, {ToyConfig.samples} samples, N = {ToyConfig.negation}, "
                 f"bank M = {ToyConfig.bank}, Heun {ToyConfig.steps} steps, seed 0.\n\n" + table)
    write_atomic(out / "estimators.json", json.dumps(list(log.records.values()), indent=1))
    print(table)


if __name__ == "__main__":
    main()
