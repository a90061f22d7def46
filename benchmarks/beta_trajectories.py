"""Where does the kernel estimate of beta* fail? Along plain-seeded trajectories of the substitution mode, compare the
estimated posterior r = beta*/(1 + beta*) with the exact one, for the samples that end in negated modes and the rest.

    python benchmarks/beta_trajectories.py --family mostly --dim 16 --samples 400

Also prints the share of the bank the kNN rule labels covered against the truly negated share.
"""

from __future__ import annotations

import argparse
import math

import torch

from safedenoiser.bench.toy import ToyConfig, build_problem
from safedenoiser.methods import Calibration, CorrectedDenoiser, make_correction
from safedenoiser.sampling import heun, initial_noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="mostly")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--split", choices=("knn", "exact"), default="exact")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = build_problem(args.dim, ToyConfig(dims=(args.dim,), family=args.family))
    unsafe = torch.tensor(problem.unsafe)
    truly = torch.isin(problem.mixture.classify(problem.bank), unsafe)
    print(f"bank share labelled covered by the kNN rule: {problem.calibration.unsafe_share:.3f}; truly negated: "
          f"{float(truly.double().mean()):.3f}")
    calibration = (problem.calibration if args.split == "knn"
                   else Calibration(problem.bank[~truly], float(truly.double().mean())))
    correction = make_correction(problem.negation, "substitution", calibration=calibration)
    rows = []

    def recording(x, sigma, **cond):
        exact = problem.mixture.log_posterior(x, sigma)[:, unsafe].logsumexp(1).exp()
        sig = torch.full((x.shape[0],), float(sigma.reshape(-1)[0]))
        moments = problem.negation.moments(x, sig)
        log_beta = calibration.log_beta_star(x, sig, moments.log_mass - math.log(len(problem.negation)))
        rows.append((float(sig[0]), exact, torch.sigmoid(log_beta).double()))
        return CorrectedDenoiser(problem.mixture, correction)(x, sigma)

    x, _ = initial_noise(list(range(args.samples)), (args.dim,), float(problem.sigmas[0]), torch.float32, "cpu")
    x = heun(recording, x, problem.sigmas)
    leaked = torch.isin(problem.mixture.classify(x), unsafe)
    print(f"{args.family} D={args.dim}, {args.split} split: {int(leaked.sum())} of {args.samples} end in negated modes")
    print("| sigma | exact r (all) | estimated r (all) | exact r (leaked) | estimated r (leaked) |")
    print("|---|---|---|---|---|")
    for sigma, exact, estimate in rows[::4]:
        on = (lambda t: f"{float(t[leaked].mean()):.3f}") if bool(leaked.any()) else (lambda t: "-")
        print(f"| {sigma:.4f} | {float(exact.mean()):.3f} | {float(estimate.mean()):.3f} | {on(exact)} | {on(estimate)} |")


if __name__ == "__main__":
    main()
