"""The fitted-ratio estimator wired in (issue 24): ``calibrate(..., estimator=)``, the image benchmark's ratio rows and
its ``--ratio`` flag; the correction the rows build uses the classifier's beta*, and bad input is named."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from safedenoiser.bench import images as image_benchmarks
from safedenoiser.bench.images_ratio import RATIO_SWEEPS, ratio_settings, rule_setting
from safedenoiser.methods import Calibration
from safedenoiser.methods.ratio import ESTIMATORS, RatioCalibration, RatioFit, calibrate
from safedenoiser.sampling import karras_sigmas

from ratio_problems import image_mixture_problem  # noqa: E402

FAST = RatioFit(sigma_max=5.0, steps=100, hidden=32)


@pytest.fixture(scope="module")
def problem():
    """4 modes in 4-D as (1, 2, 2) "images", one negated: N = 200 negation items, a bank of 400 model samples."""
    return image_mixture_problem(FAST)[1:]


def test_calibrate_dispatches_on_the_estimator(problem):
    negation, bank, fitted = problem
    assert isinstance(fitted, RatioCalibration) and fitted.ratio.fit == FAST
    assert calibrate(bank, negation, "ratio", fit=FAST) is not fitted and calibrate(bank, negation, "ratio", fit=FAST).ratio is fitted.ratio  # cached fit
    kernel = calibrate(bank, negation)
    assert type(kernel) is Calibration and kernel.cut != "ratio"
    assert ESTIMATORS == ("kernel", "ratio")


@pytest.mark.parametrize("kwargs, message", [({"estimator": "knn"}, "unknown beta\\* estimator 'knn'"),
                                             ({"estimator": "kernel", "fit": FAST}, "settings of the ratio estimator")])
def test_calibrate_names_bad_input(problem, kwargs, message):
    negation, bank, _ = problem
    with pytest.raises(ValueError, match=message):
        calibrate(bank, negation, **kwargs)


def test_ratio_rows_use_the_classifiers_beta_star_in_their_window(problem):
    negation, bank, fitted = problem
    sigmas = karras_sigmas(6, 0.002, 5.0, 7.0)
    settings = ratio_settings(lambda x, sigma: x * 0.5, negation, fitted, sigmas)
    assert [(s.method, s.value) for s in settings] == [(m, g) for m, gains in RATIO_SWEEPS.items() for g in gains]
    x = bank[:16] + 0.3 * torch.randn(bank[:16].shape, generator=torch.Generator().manual_seed(1))
    for setting in settings:
        denoiser = setting.make()
        seen: dict = {}
        denoiser.correction.callback = seen.update
        high, low = torch.full((16,), float(sigmas[0])), torch.full((16,), float(sigmas[-2]))
        out = denoiser(x, high)
        expected = torch.sigmoid(fitted.ratio.log_beta_star(x.flatten(1), high) + math.log(setting.value))
        assert torch.allclose(seen["weight"], expected, atol=1e-6) and torch.isfinite(out).all()
        if setting.method == "substitution-ratio":  # first half of the steps only: bit-identical at the last step
            assert torch.equal(denoiser(x, low), x * 0.5)
    rule = rule_setting(lambda x, sigma: x, negation, fitted, sigmas, {"gain": 1.0, "floor": "share"})
    assert rule.knob == "gain+floor" and rule.make().correction.floor == "share"


def test_bench_images_ratio_flag_reaches_the_uncond_benchmark(monkeypatch, tmp_path):
    seen = {}

    def fake(name):
        def run(out, size, **kwargs):
            seen[name] = kwargs
            return {"best": {}}
        return run

    monkeypatch.setattr(image_benchmarks, "BENCHMARKS", {n: fake(n) for n in ("uncond", "cond", "memorisation")})
    parser = argparse.ArgumentParser()
    image_benchmarks.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "images", "all", "--quick", "--ratio", "--out", str(tmp_path)])
    args.run(args)
    assert seen == {"uncond": {"ratio": True}, "cond": {}, "memorisation": {}}


def test_web_engine_takes_the_estimator_for_bank_methods(problem, monkeypatch):
    from safedenoiser.web import generation
    from safedenoiser.web.generation import Engine, Request, WebInputError, resolve

    with pytest.raises(WebInputError, match="unknown beta\\* estimator 'knn'"):
        resolve(Request(model="fashion-uncond", method="substitution", estimator="knn"))
    with pytest.raises(WebInputError, match="for the methods that calibrate on a bank .*not conditional"):
        resolve(Request(method="conditional", estimator="ratio"))
    request = resolve(Request(model="fashion-uncond", method="substitution", estimator="ratio"))
    negation, bank, fitted = problem
    calls = []
    monkeypatch.setattr(generation, "calibrate", lambda b, n, estimator: calls.append(estimator) or fitted)
    engine = Engine(generation.Limits(bank=8))
    ticker = generation._Ticker(None, 1.0)
    draw = lambda seeds: bank[: len(seeds)]  # noqa: E731
    assert engine._calibration(request, negation, draw, ticker) is fitted
    assert engine._calibration(request, negation, draw, ticker) is fitted and calls == ["ratio"]  # cached per setting
    engine._calibration(resolve(Request(model="fashion-uncond", method="substitution")), negation, draw, ticker)
    assert calls == ["ratio", "kernel"]  # the estimator is part of the bank's cache key
