"""beta* from a fitted density ratio (methods/ratio.py, issue 24): accuracy against the exact mixture posterior, the
cache, the modes' identity where inactive, the default rule judged by the classifier, and bad input."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from safedenoiser import NegationSet
from safedenoiser.methods import Window, default_candidates, make_correction, select_knobs
from safedenoiser.methods import ratio as ratio_module
from safedenoiser.methods.ratio import FittedRatio, RatioCalibration, RatioFit, fit_ratio
from safedenoiser.models import make_mixture

FAST = RatioFit(sigma_max=5.0, steps=300, hidden=64)


@pytest.fixture(scope="module")
def problem():
    """4 modes in 4-D, one negated (25%): N = 300 negation items, a bank of 600 exact samples, the fitted ratio."""
    torch.set_num_threads(1)
    mixture = make_mixture(4, n_components=4, seed=0)
    gen = torch.Generator().manual_seed(0)
    negation = NegationSet(mixture.restrict([0]).sample(300, gen)[0].float())
    bank, labels = mixture.sample(600, gen)
    fitted = fit_ratio(negation, bank.float(), FAST)
    return mixture, negation, bank.float(), labels, fitted


def test_fitted_posterior_approaches_the_exact_one(problem):
    """r = beta*/(1 + beta*) from the classifier against the exact posterior of the negated mode, on fresh noised samples.
    Measured with this fit: mean |error| 0.001 / 0.005 / 0.029 / 0.013 / 0.003 at sigma 0.05 / 0.2 / 0.5 / 1 / 3,
    against 0.37 / 0.36 / 0.24 / 0.13 / 0.04 for the prior alone."""
    mixture, _, _, labels, fitted = problem
    assert abs(fitted.unsafe_share - float((labels == 0).double().mean())) < 0.02
    assert float((fitted.covered != (labels == 0)).double().mean()) < 0.01
    x0, _ = mixture.sample(2000, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(6)
    for sigma in (0.05, 0.2, 0.5, 1.0, 3.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        exact = mixture.log_posterior(x, sigma)[:, 0].exp()
        estimate = fitted.posterior(x.float(), sigma).double()
        error, prior_error = (estimate - exact).abs().mean(), (0.25 - exact).abs().mean()
        assert error < 0.05 and error < max(0.3 * prior_error, 0.01), (sigma, float(error), float(prior_error))


def test_log_odds_is_one_batched_pass_with_a_sigma_per_row(problem):
    _, _, bank, _, fitted = problem
    sigma = torch.linspace(0.01, 4.0, 7)
    batched = fitted.log_odds(bank[:7], sigma)
    rows = torch.stack([fitted.log_odds(bank[i:i + 1], sigma[i:i + 1])[0] for i in range(7)])
    assert batched.shape == (7,) and torch.allclose(batched, rows, atol=1e-5)
    # below the fitted range the classifier of its smallest level answers
    assert torch.equal(fitted.log_odds(bank[:3], torch.full((3,), 1e-4)), fitted.log_odds(bank[:3], torch.full((3,), FAST.sigma_min)))


def test_cache_hits_by_content_hash_and_misses_on_any_change(problem, tmp_path, monkeypatch):
    _, negation, bank, _, fitted = problem
    assert fit_ratio(NegationSet(negation.data.clone()), bank.clone(), FAST) is fitted  # same contents: a hit
    calls = []
    monkeypatch.setattr(ratio_module, "_fit", lambda flat, neg, fit, key, progress, item_shape=None: calls.append(key) or FittedRatio(
        fitted.net, fitted.covered, fitted.unsafe_share, fit, key))
    other_bank = bank.clone()
    other_bank[0, 0] += 1e-3
    fit_ratio(negation, other_bank, FAST)
    fit_ratio(NegationSet(negation.data[1:]), bank, FAST)
    fit_ratio(negation, bank, RatioFit(sigma_max=5.0, steps=300, hidden=64, seed=1))
    assert len(calls) == 3 and len(set(calls)) == 3 and fitted.key not in calls
    # on disk: written once, read back with the same answers, refused for other contents
    monkeypatch.setattr(ratio_module, "_CACHE", type(ratio_module._CACHE)())
    fit_ratio(negation, other_bank, FAST, cache_dir=tmp_path / "fits")  # the folder is created
    monkeypatch.setattr(ratio_module, "_CACHE", type(ratio_module._CACHE)())
    monkeypatch.setattr(ratio_module, "_fit", lambda *a: pytest.fail("a disk hit must not refit"))
    loaded = fit_ratio(negation, other_bank, FAST, cache_dir=tmp_path / "fits")
    sigma = torch.full((5,), 0.3)
    assert torch.equal(loaded.log_odds(bank[:5], sigma), fitted.log_odds(bank[:5], sigma))
    assert torch.equal(loaded.covered, fitted.covered) and loaded.unsafe_share == fitted.unsafe_share
    (tmp_path / "fits" / f"ratio-{calls[0]}.safetensors").rename(tmp_path / "fits" / f"ratio-{calls[1]}.safetensors")
    with pytest.raises(ValueError, match="does not match"):
        fit_ratio(NegationSet(negation.data[1:]), bank, FAST, cache_dir=tmp_path / "fits")


def test_modes_with_the_ratio_calibration(problem):
    mixture, negation, bank, _, fitted = problem
    calibration = RatioCalibration.fit(bank, negation, FAST)  # a cache hit
    assert isinstance(calibration, RatioCalibration) and calibration.ratio is fitted
    assert calibration.safe_bank.shape[0] == int((~fitted.covered).sum()) and calibration.unsafe_share == fitted.unsafe_share
    x0 = mixture.sample(64, torch.Generator().manual_seed(9))[0].float()
    x = x0 + 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(10))
    for mode in ("substitution", "calibrated"):
        outside = make_correction(negation, mode, calibration=calibration, window=Window(1.0, 2.0))
        assert outside(x, 0.3, x0) is x0
        assert make_correction(negation, mode, calibration=calibration, gain=0.0)(x, 0.3, x0) is x0
        silent = make_correction(negation, mode, calibration=calibration, log_threshold=math.inf)
        assert torch.equal(silent(x, 0.3, x0), x0)
        seen = {}
        moved = make_correction(negation, mode, calibration=calibration, callback=seen.update)(x, 0.3, x0)
        expected = fitted.log_beta_star(x, torch.full((64,), 0.3))
        assert torch.allclose(seen["log_beta"], expected) and moved.shape == x0.shape and torch.isfinite(moved).all()
    # substitution's r is the classifier's posterior, and the floor is its posterior of the predicted x0
    seen = {}
    make_correction(negation, "substitution", calibration=calibration, callback=seen.update)(x, 0.3, x0)
    assert torch.allclose(seen["weight"], fitted.posterior(x, 0.3), atol=1e-6)
    assert torch.equal(calibration.covered_posterior(x0, negation), fitted.posterior(x0))


def test_select_knobs_judged_by_the_fitted_classifier(problem):
    mixture, negation, bank, _, _ = problem
    safe = mixture.restrict([1, 2, 3])
    seen = []

    def draw(knobs, calibration):
        assert isinstance(calibration, RatioCalibration) and calibration.bank_size == 450
        seen.append(knobs)
        gen = torch.Generator().manual_seed(int(knobs["gain"] * 10))
        if knobs["gain"] < 2:  # a third of the trial samples on the negated mode
            return torch.cat([safe.sample(100, gen)[0], mixture.restrict([0]).sample(50, gen)[0]]).float()
        return (safe.sample(150, gen)[0] + (knobs["gain"] - 2) * 0.1).float()  # safe, shifted above gain 2

    choice = select_knobs(draw, bank, negation, default_candidates("calibrated"),
                          calibrate=partial(RatioCalibration.fit, fit=RatioFit(sigma_max=5.0, steps=100, hidden=32)))
    covered = {t["knobs"]["gain"]: t["covered"] for t in choice.trials}
    assert choice.knobs == {"gain": 2.0} and choice.meets_target
    assert abs(covered[0.5] - 1 / 3) < 0.03 and covered[4.0] <= 0.01


def test_bad_input_is_refused_with_a_clear_message(problem):
    _, negation, bank, _, _ = problem
    with pytest.raises(ValueError, match="at least two items"):
        fit_ratio(negation, bank[:1], FAST)
    broken = bank.clone()
    broken[3, 1] = math.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_ratio(negation, broken, FAST)
    with pytest.raises(ValueError, match="ratio bank"):
        fit_ratio(negation, bank[:, :3], FAST)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        RatioFit(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="label_cut"):
        RatioFit(label_cut=1.5)
    with pytest.raises(ValueError, match="steps"):
        RatioFit(steps=0)


def test_label_floor_is_the_median_neighbour_spacing_per_coordinate(problem):
    _, negation, _, _, _ = problem
    distances = torch.cdist(negation.flat.double(), negation.flat.double())
    distances.fill_diagonal_(math.inf)
    spacing = float(distances.min(1).values.median()) / math.sqrt(negation.dim)
    assert ratio_module.label_sigma(negation.flat, FAST) == pytest.approx(max(FAST.sigma_min, spacing), rel=1e-4)
    assert ratio_module.label_sigma(negation.flat, RatioFit(label_sigma=0.3)) == 0.3


def test_toy_benchmark_reports_the_ratio_rows(tmp_path, monkeypatch):
    """``bench toy --ratio``: the fitted-ratio sweeps and its default rule appear as families of their own (a tiny fit)."""
    from safedenoiser.bench import toy

    monkeypatch.setattr(toy, "ratio_fit", lambda cfg: RatioFit(sigma_max=cfg.sigma_max, steps=100, hidden=32))
    cfg = toy.ToyConfig(dims=(2,), samples=60, negation=40, bank=120, steps=5, ratio=True, out=str(tmp_path))
    summary = toy.run_toy(cfg, progress=False)
    families = {r["family"] for r in summary["best"]}
    assert {"substitution (ratio)", "calibrated (ratio)", "substitution (ratio, default rule)", "substitution"} <= families
    assert "substitution (ratio, default rule)" in (tmp_path / "toy.md").read_text()
    plain = toy.ToyConfig(dims=(2,), samples=60, negation=40, bank=120, steps=5)  # without --ratio: no fit, no rows
    problem = toy.build_problem(2, plain)
    assert problem.ratio is None and not any("ratio" in run.method for run in toy.method_runs(problem, plain))
