"""The small problem the fitted-ratio tests share: 4 modes in 4-D as (1, 2, 2) "images", mode 0 negated."""

from __future__ import annotations

import torch

from safedenoiser import NegationSet
from safedenoiser.methods.ratio import RatioFit, calibrate
from safedenoiser.models import make_mixture


def image_mixture_problem(fit: RatioFit):
    """(mixture, negation set of 200 mode-0 items, bank of 400 model samples, its fitted-ratio calibration)."""
    torch.set_num_threads(1)
    mixture = make_mixture(4, n_components=4, seed=0)
    gen = torch.Generator().manual_seed(0)
    negation = NegationSet(mixture.restrict([0]).sample(200, gen)[0].float().reshape(-1, 1, 2, 2), space="pixels")
    bank = mixture.sample(400, gen)[0].float().reshape(-1, 1, 2, 2)
    return mixture, negation, bank, calibrate(bank, negation, "ratio", fit=fit)
