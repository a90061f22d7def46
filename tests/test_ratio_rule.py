"""The fitted-ratio default rule's second version (issue 24): the independent judge (a conv classifier refitted on the
calibration's split) and its soft count in select_knobs, the rule's window candidates, and the conv net's bad input."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from safedenoiser import NegationSet
from safedenoiser.bench.images_ratio import rule_candidates, rule_setting
from safedenoiser.methods import select_knobs
from safedenoiser.methods import ratio as ratio_module
from safedenoiser.methods.ratio import RatioCalibration, RatioFit, fit_judge, rule_judge
from safedenoiser.sampling import karras_sigmas

from ratio_problems import image_mixture_problem  # noqa: E402

FAST = RatioFit(sigma_max=5.0, steps=150, hidden=32)


@pytest.fixture(scope="module")
def problem():
    """4 modes in 4-D as (1, 2, 2) "images", mode 0 negated: 200 negation items, a bank of 400 model samples."""
    return image_mixture_problem(FAST)


def test_judge_is_a_conv_net_on_the_calibrations_split_and_is_cached(problem, tmp_path):
    mixture, negation, bank, calibration = problem
    judge = fit_judge(negation, bank, calibration.ratio, cache_dir=tmp_path)
    assert isinstance(judge.net, ratio_module.ConvRatioNet) and judge.net is not calibration.ratio.net
    assert torch.equal(judge.covered, calibration.ratio.covered) and judge.unsafe_share == calibration.unsafe_share
    gen = torch.Generator().manual_seed(5)
    negated, safe = mixture.restrict([0]).sample(200, gen)[0].float(), mixture.restrict([1, 2, 3]).sample(200, gen)[0].float()
    assert judge.posterior(negated).mean() > 0.9 and judge.posterior(safe).mean() < 0.1  # fresh samples, exact labels
    assert fit_judge(negation, bank, calibration.ratio) is judge  # memory cache, keyed by the ratio's key
    ratio_module._CACHE.clear()
    again = fit_judge(negation, bank, calibration.ratio, cache_dir=tmp_path)  # disk round trip
    assert again is not judge and torch.equal(again.posterior(negated), judge.posterior(negated))


def test_select_knobs_counts_trials_softly_with_the_independent_judge(problem):
    """The trial's covered share is the mean posterior of the judge; the calibration's own count is kept beside it."""
    mixture, negation, bank, _ = problem
    gen = torch.Generator().manual_seed(7)
    trial = torch.cat([mixture.restrict([1, 2, 3]).sample(80, gen)[0], mixture.restrict([0]).sample(20, gen)[0]]).float()
    calibrate_fn = partial(RatioCalibration.fit, fit=FAST)
    judge = rule_judge(negation)
    choice = select_knobs(lambda knobs, cal: trial if knobs["gain"] < 2 else trial[:80], bank, negation,
                          [{"gain": 1.0}, {"gain": 2.0}], calibrate=calibrate_fn, judge=judge)
    posterior = judge(calibrate_fn(bank[:-100], negation))
    first, second = choice.trials
    assert first["covered"] == pytest.approx(float(posterior(trial.flatten(1)).double().mean()))
    assert abs(first["covered"] - 0.2) < 0.03 and second["covered"] < 0.01  # 20 of 100 drawn from the negated mode
    assert "covered_by_calibration" in first and abs(first["covered_by_calibration"] - 0.2) < 0.03
    assert choice.knobs == {"gain": 2.0}


def test_rule_candidates_and_the_rule_rows_window(problem):
    _, negation, bank, calibration = problem
    half = rule_candidates(("half",))
    assert all(c["window"] == "half" for c in half) and {"window": "half", "gain": 1.0, "floor": "share"} in half
    both = rule_candidates()
    assert both[: len(half)] == half and [c["gain"] for c in both[len(half):]] == [0.5, 1.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="rule windows"):
        rule_candidates(("first",))
    sigmas = karras_sigmas(6, 0.002, 5.0, 7.0)
    x, low = bank[:8], torch.full((8,), float(sigmas[-2]))
    every = rule_setting(lambda x, sigma: x * 0.5, negation, calibration, sigmas, {"window": "all", "gain": 2.0})
    first_half = rule_setting(lambda x, sigma: x * 0.5, negation, calibration, sigmas, {"window": "half", "gain": 2.0})
    assert every.knob == "gain (all steps)" and first_half.knob == "gain"
    assert torch.equal(first_half.make()(x, low), x * 0.5)  # inactive at the last step ...
    seen: dict = {}
    corrected = every.make()
    corrected.correction.callback = seen.update
    corrected(x, low)
    assert "weight" in seen  # ... every step: active there


def test_conv_net_bad_input_is_named(problem):
    _, negation, bank, calibration = problem
    with pytest.raises(ValueError, match="net must be one of"):
        RatioFit(net="resnet")
    flat_negation = NegationSet(negation.flat)  # (N, 4) items: no image shape
    with pytest.raises(ValueError, match="needs image items"):
        fit_judge(flat_negation, bank.flatten(1), calibration.ratio)
    with pytest.raises(ValueError, match="fitted ratio labelled"):
        fit_judge(negation, bank[:10], calibration.ratio)
    with pytest.raises(ValueError, match="RatioCalibration"):
        rule_judge(negation)(object())
