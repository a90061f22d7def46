"""Corrections against independent references: explicit Gaussian densities, loops over items, exact mixtures."""

import math

import pytest
import torch

from safedenoiser import (Calibration, NegationSet, NegativeGuidance, SparseRepellency, Window, karras_sigmas,
                          make_correction, make_mixture, safe_denoiser, sample)


@pytest.fixture(scope="module")
def setup():
    mix = make_mixture(4, seed=0)
    gen = torch.Generator().manual_seed(0)
    negation = NegationSet(mix.restrict([0, 1]).sample(200, gen)[0])
    bank = mix.sample(600, gen)[0]
    return mix, negation, Calibration.from_bank(bank, negation)


def explicit_paper_update(x, sigma, x0, items, eta):
    """x0 + eta beta (x0 - E_unsafe) with beta = mean_n N(x; x_n, sigma^2 I) written out in float64."""
    out = []
    for b in range(x.shape[0]):
        sq = ((x[b] - items) ** 2).sum(1)
        log_q = -sq / (2 * sigma**2) - 0.5 * x.shape[1] * math.log(2 * math.pi * sigma**2)
        beta = torch.exp(torch.logsumexp(log_q, 0)) / items.shape[0]
        e_unsafe = (torch.softmax(log_q, 0)[:, None] * items).sum(0)
        out.append(x0[b] + eta * beta * (x0[b] - e_unsafe))
    return torch.stack(out)


def test_paper_mode_matches_explicit_formula(setup):
    mix, negation, _ = setup
    x = torch.randn(5, 4, dtype=torch.float64)
    sigma = 0.8
    x0 = mix.denoise(x, sigma)
    got = make_correction(negation, "paper", eta=3.0)(x, sigma, x0)
    assert torch.allclose(got, explicit_paper_update(x, sigma, x0, negation.flat, 3.0), atol=1e-10)


@pytest.mark.parametrize("mode, knobs", [
    ("paper", {"eta": 0.0}),
    ("calibrated", {"gain": 0.0}),
    ("reference", {"scale": 0.0}),
    ("paper", {"eta": 5.0, "window": Window.never()}),
    ("calibrated", {"gain": 2.0, "window": Window(0.0, 0.001)}),
])
def test_zero_correction_is_bit_identical_through_sampling(setup, mode, knobs):
    mix, negation, calibration = setup
    if mode == "calibrated":
        knobs = {**knobs, "calibration": calibration}
    sigmas = karras_sigmas(10)
    plain = sample(mix, list(range(16)), (4,), sigmas, dtype=torch.float64)
    safe = sample(safe_denoiser(mix, negation, mode, **knobs), list(range(16)), (4,), sigmas, dtype=torch.float64)
    assert torch.equal(plain, safe)


def test_inactive_rows_are_bit_identical_and_diagnostics_report(setup):
    mix, negation, _ = setup
    seen = []
    correction = make_correction(negation, "paper", eta=1e3, window=Window(0.5, 2.0), callback=seen.append)
    x = torch.randn(3, 4, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    x0 = mix.denoise(x, sigma)
    out = correction(x, sigma, x0)
    assert torch.equal(out[0], x0[0]) and torch.equal(out[2], x0[2]) and not torch.equal(out[1], x0[1])
    info = seen[-1]
    assert info["active"].tolist() == [False, True, False]
    assert {"sigma", "weight", "log_beta", "log_kernel_mass", "max_kernel_weight"} <= set(info)


def test_threshold_gates_on_log_beta(setup):
    mix, negation, _ = setup
    x = torch.randn(8, 4, dtype=torch.float64)
    x0 = mix.denoise(x, 0.5)
    seen = []
    make_correction(negation, "paper", eta=1.0, callback=seen.append)(x, 0.5, x0)
    log_beta = seen[-1]["log_beta"]
    cut = float(log_beta.median())
    out = make_correction(negation, "paper", eta=1.0, log_threshold=cut)(x, 0.5, x0)
    changed = (out != x0).any(1)
    assert torch.equal(changed, log_beta > cut)


def test_calibrated_weight_converges_to_exact_beta_star():
    """With exact samples, the kernel-density ratio estimates Z_u p_u,sigma / (Z_s p_s,sigma) of the mixture:
    a Gaussian KDE of clean samples at bandwidth sigma is an unbiased estimate of the sigma-noised density."""
    mix = make_mixture(2, seed=0)
    gen = torch.Generator().manual_seed(5)
    unsafe, safe = mix.restrict([0, 1]), mix.restrict(range(2, 8))
    negation = NegationSet(unsafe.sample(4000, gen)[0])
    calibration = Calibration.from_bank(mix.sample(16000, gen)[0], negation)
    assert abs(calibration.unsafe_share - 0.25) < 0.02
    sigma = 0.6
    x = mix.sample(200, gen)[0] + sigma * torch.randn(200, 2, generator=gen, dtype=torch.float64)
    seen = []
    make_correction(negation, "calibrated", calibration=calibration, callback=seen.append)(x, sigma, mix.denoise(x, sigma))
    exact = math.log(0.25 / 0.75) + unsafe.log_density(x, sigma) - safe.log_density(x, sigma)
    moderate = exact.abs() < 3
    assert float((seen[-1]["log_beta"] - exact)[moderate].abs().median()) < 0.1


def test_calibrated_mode_removes_unsafe_samples_in_64d():
    mix = make_mixture(64, seed=0)
    gen = torch.Generator().manual_seed(1)
    negation = NegationSet(mix.restrict([0, 1]).sample(300, gen)[0].float())
    sigmas = karras_sigmas(20, 0.002, 20.0)
    bank = sample(mix, list(range(1000, 1800)), (64,), sigmas)
    calibration = Calibration.from_bank(bank, negation)
    seeds = list(range(300))
    is_unsafe = lambda x: torch.isin(mix.classify(x), torch.tensor([0, 1])).double().mean()
    plain = sample(mix, seeds, (64,), sigmas)
    safe = sample(safe_denoiser(mix, negation, "calibrated", calibration=calibration, gain=2.0), seeds, (64,), sigmas)
    assert float(is_unsafe(plain)) > 0.15
    assert float(is_unsafe(safe)) <= 0.02


def test_reference_mode_follows_the_authors_update(setup):
    _, negation, _ = setup
    x0 = torch.randn(4, 4, dtype=torch.float64)
    bandwidth, scale = 0.7, 0.3
    out = make_correction(negation, "reference", bandwidth=bandwidth, scale=scale)(x0, 1.0, x0)
    items = negation.flat
    dist = torch.cdist(x0, items)
    weights = torch.softmax(-dist / (2 * bandwidth**2), 1)
    assert torch.allclose(out, x0 - scale * weights @ items, atol=1e-10)


def test_spell_pushes_out_of_every_ball():
    items = torch.tensor([[0.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    negation = NegationSet(items)
    x0 = torch.tensor([[0.3, 0.4], [5.0, -0.1], [2.0, 2.0]], dtype=torch.float64)
    out = SparseRepellency(negation, radius=1.0)(x0, 1.0, x0)
    assert torch.allclose(torch.cdist(out[:2], items).min(1).values, torch.ones(2, dtype=torch.float64))
    assert torch.equal(out[2], x0[2])


def test_negative_guidance_formula():
    mix = make_mixture(3, seed=0)
    neg = mix.restrict([0])
    x = torch.randn(4, 3, dtype=torch.float64)
    guided = NegativeGuidance(mix, neg, 2.0)(x, torch.full((4,), 0.5))
    assert torch.allclose(guided, 3 * mix.denoise(x, 0.5) - 2 * neg.denoise(x, 0.5))


@pytest.mark.parametrize("knobs, message", [
    ({"mode": "magic"}, "unknown safe-denoiser mode"),
    ({"mode": "reference", "bandwidth": 0.0}, "bandwidth must be"),
    ({"mode": "reference", "bandwidth": -1.0}, "bandwidth must be"),
    ({"mode": "paper", "eta": -1.0}, "eta must be"),
    ({"mode": "paper", "eta": float("nan")}, "eta must be"),
])
def test_bad_knobs_are_refused(setup, knobs, message):
    _, negation, _ = setup
    with pytest.raises(ValueError, match=message):
        make_correction(negation, **knobs)


def test_mismatched_samples_are_refused(setup):
    mix, negation, _ = setup
    den = safe_denoiser(lambda x, s: x, negation, "paper")
    with pytest.raises(ValueError, match="item shape"):
        den(torch.randn(2, 5), torch.ones(2))
    with pytest.raises(ValueError, match="calibrated mode needs a Calibration"):
        make_correction(negation, "calibrated", calibration=None)


def test_window_from_step_fractions():
    sigmas = karras_sigmas(10)
    window = Window.from_step_fractions(sigmas, 0.0, 0.2)
    assert window.sigma_max == float(sigmas[0]) and window.sigma_min == float(sigmas[1])
    assert Window.from_step_fractions(sigmas, 0.5, 0.5).empty


def test_substitution_mode_approaches_the_exact_safe_denoiser():
    """With exact samples in the negation set and the bank, x0 + r (E_bank - E_unsafe) is close to the exact
    E_safe of the mixture, much closer than the model's E_data, and its weight r stays in [0, 1]."""
    mix = make_mixture(2, seed=0)
    gen = torch.Generator().manual_seed(6)
    safe_mixture = mix.restrict(range(2, 8))
    negation = NegationSet(mix.restrict([0, 1]).sample(4000, gen)[0])
    calibration = Calibration.from_bank(mix.sample(16000, gen)[0], negation)
    sigma = 0.4
    x = mix.sample(400, gen)[0] + sigma * torch.randn(400, 2, generator=gen, dtype=torch.float64)
    seen = []
    x0 = mix.denoise(x, sigma)
    out = make_correction(negation, "substitution", calibration=calibration, callback=seen.append)(x, sigma, x0)
    exact = safe_mixture.denoise(x, sigma)
    assert bool(((seen[-1]["weight"] >= 0) & (seen[-1]["weight"] <= 1)).all())
    assert float((out - exact).norm(dim=1).mean()) < 0.25 * float((x0 - exact).norm(dim=1).mean())
