"""The default gain rule (select_gain), the query form of the coverage rule, and the mixture families of issue 15."""

from __future__ import annotations

import math

import pytest
import torch

from safedenoiser import NegationSet
from safedenoiser.methods import Calibration, default_candidates, make_correction, select_knobs
from safedenoiser.methods.calibration import coverage_cut, negation_share
from safedenoiser.models import make_ring_mixture


def _brute_share(queries, negation, bank, k):
    """Share of negation items among the k nearest of (negation + bank) by sorting every distance."""
    points = torch.cat([negation, bank])
    labels = torch.cat([torch.ones(len(negation)), torch.zeros(len(bank))])
    order = torch.cdist(queries.double(), points.double()).argsort(1)[:, :k]
    return labels[order].mean(1).double()


def test_negation_share_of_queries_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    neg, bank, queries = (torch.randn(n, 5, generator=gen) for n in (30, 50, 17))
    got = negation_share(bank, NegationSet(neg), 7, queries=queries)
    assert torch.allclose(got.double(), _brute_share(queries, neg, bank, 7))
    # without queries each bank sample is its own query, itself excluded
    own = negation_share(bank, NegationSet(neg), 7)
    expected = torch.stack([_brute_share(bank[i:i + 1], neg, torch.cat([bank[:i], bank[i + 1:]]), 7)[0] for i in range(50)])
    assert torch.allclose(own.double(), expected)


def _two_blobs(n, gen, shift=0.0):
    safe = torch.randn(n, 4, generator=gen) * 0.3 + torch.tensor([3.0, 0, 0, 0]) + shift
    unsafe = torch.randn(n, 4, generator=gen) * 0.3 - torch.tensor([3.0, 0, 0, 0])
    return safe, unsafe


def test_select_knobs_picks_the_lowest_mmd_among_gains_that_stop_the_unsafe_content():
    """Trial samples built so the answer is known: below gain 4 half of them sit on the negated blob; at 4 they are
    the safe blob; above 4 they are the safe blob shifted (safe but farther from p_safe)."""
    gen = torch.Generator().manual_seed(1)
    safe, unsafe = _two_blobs(300, gen)
    negation = NegationSet(unsafe[:150])
    bank = torch.cat([safe[:150], unsafe[150:]])[torch.randperm(300, generator=gen)]
    seen = []

    def draw(knobs, calibration):
        assert isinstance(calibration, Calibration) and calibration.bank_size == 225  # the held-out quarter is not used
        gain = knobs["gain"]
        seen.append(gain)
        s, u = _two_blobs(75, torch.Generator().manual_seed(int(gain * 10)), shift=0.0 if gain <= 4 else gain / 4)
        return torch.cat([s[:37], u[:38]]) if gain < 4 else s

    choice = select_knobs(draw, bank, negation, default_candidates("calibrated"))
    assert seen == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert choice.knobs == {"gain": 4.0} and choice.meets_target
    covered = {t["knobs"]["gain"]: t["covered"] for t in choice.trials}
    assert covered[1.0] == pytest.approx(38 / 75) and covered[4.0] == 0.0
    # nothing meets the target: the least covered gain, flagged
    worst = select_knobs(lambda k, c: _two_blobs(75, torch.Generator().manual_seed(int(k["gain"] * 10)))[1][: 70 - int(k["gain"])],
                         bank, negation, default_candidates("calibrated"))
    assert worst.knobs == {"gain": 16.0} and not worst.meets_target


def test_select_knobs_reports_bad_input():
    negation = NegationSet(torch.randn(5, 3))
    with pytest.raises(ValueError, match="too small"):
        select_knobs(lambda k, c: torch.zeros(2, 3), torch.randn(3, 3), negation, [{"gain": 1.0}])
    with pytest.raises(ValueError, match="no candidate"):
        select_knobs(lambda k, c: torch.zeros(2, 3), torch.randn(40, 3), negation, [])
    assert default_candidates("substitution")[-1] == {"gain": 1.0, "floor": "share"}
    assert coverage_cut(100, 300) == pytest.approx(0.125)


@pytest.mark.parametrize("dim", [2, 64])
def test_ring_mixture_neighbours_are_spacing_spreads_apart(dim):
    mix = make_ring_mixture(dim, n_components=12, spacing=5.0, std=0.15)
    gaps = (mix.means - mix.means.roll(1, 0)).norm(dim=1)
    assert torch.allclose(gaps, torch.full((12,), 0.75, dtype=torch.float64))
    assert torch.linalg.matrix_rank(mix.means) == 2  # a ring in a plane of R^D
    # the exact Bayes judge confuses neighbours at Phi(-spacing / 2) = 0.6%
    x, labels = mix.sample(20000, torch.Generator().manual_seed(0))
    error = float((mix.classify(x) != labels).double().mean())
    assert abs(error - 2 * 0.5 * math.erfc(2.5 / math.sqrt(2))) < 0.004


@pytest.mark.parametrize("family", ["adjacent", "mostly"])
def test_toy_families_run_and_report_the_default_rule(family, tmp_path, one_thread):
    from safedenoiser.bench.toy import ToyConfig, run_toy

    one_each = {"paper": [1.0], "calibrated": [1.0], "substitution": [1.0], "substitution_floor": [1.0], "reference": [1.0],
                "reference_bandwidth": [1.0],
                "spell": [0.1], "spell_below": [0.5], "negative_guidance": [1.0]}
    cfg = ToyConfig(dims=(2,), samples=100, negation=50, bank=200, steps=6, family=family, out=str(tmp_path / family),
                    sweeps=one_each)
    summary = run_toy(cfg, progress=False)
    methods = {r["method"] for r in summary["records"]}
    assert {"calibrated (default rule)", "substitution (default rule)"} <= methods
    plain = next(r for r in summary["records"] if r["method"] == "plain")
    assert plain["unsafe"] > (0.5 if family == "mostly" else 0.1)
    assert f"family `{family}`" in (tmp_path / family / "toy.md").read_text()
    with pytest.raises(ValueError, match="unknown mixture family"):
        ToyConfig(family="nope")


def test_classifier_floor_is_the_soft_coverage_rule_and_corrects_committed_unsafe_samples():
    """The floor's classifier is near 1 on negated content (the share of negation neighbours, normalised), 0 far from it; with the floor a clean unsafe x0 at small sigma
    (where the kernel estimate of beta* has collapsed) is replaced, a clean safe one is returned bit-identical."""
    gen = torch.Generator().manual_seed(5)
    safe, unsafe = _two_blobs(200, gen)
    negation = NegationSet(unsafe[:100])
    calibration = Calibration.from_bank(torch.cat([safe[:150], unsafe[100:150]]), negation)
    posterior = calibration.covered_posterior(torch.cat([unsafe[150:160], safe[150:160]]), negation)
    assert bool((posterior[:10] > 0.8).all()) and bool((posterior[10:] == 0).all())
    with pytest.raises(ValueError, match="from_bank"):
        make_correction(negation, "substitution", calibration=Calibration(safe[:50], 0.2), floor="share")
    with pytest.raises(ValueError, match="unknown floor"):
        make_correction(negation, "substitution", calibration=calibration, floor="yes")
    floor = make_correction(negation, "substitution", calibration=calibration, floor="share", log_threshold=0.0)
    x0 = torch.cat([unsafe[160:165], safe[160:165]])
    out = floor(x0, 1e-3, x0)
    assert torch.equal(out[5:], x0[5:])
    assert bool((out[:5, 0] > 0).all())  # moved to the safe blob (first coordinate +3)


def test_fixed_point_cut_is_the_least_fixed_point_above_the_worst_case_cut():
    """Brute force over every candidate unsafe share k / M: a fixed point is a cut N / (2 (N + k)) that labels exactly
    k bank samples covered (k >= 1); the iteration from the worst case must stop at the smallest one."""
    from safedenoiser.methods.calibration import fixed_point_cut

    for seed in range(5):
        share = torch.rand(200, generator=torch.Generator().manual_seed(seed)) ** 3  # mostly small shares
        n, m = 150, len(share)
        fixed = [coverage_cut(n, m, k / m) for k in range(1, m + 1)
                 if int((share >= coverage_cut(n, m, k / m)).sum()) == k or (k == 1 and not (share >= coverage_cut(n, m, 1 / m)).any())]
        assert fixed and fixed_point_cut(share, n) == pytest.approx(min(fixed))
        assert fixed_point_cut(share, n) >= coverage_cut(n, m)


def test_fixed_point_cut_labels_an_adjacent_safe_mode_less_often():
    """10% of the bank from the negated blob, 20% from a safe blob two widths away, the rest far: the worst-case cut
    counts much of the adjacent blob as covered, the fixed-point cut less, and both catch the negated blob."""
    gen = torch.Generator().manual_seed(3)

    def blob(n, centre):
        return torch.randn(n, 8, generator=gen) + torch.tensor([centre] + [0.0] * 7)

    negation = NegationSet(blob(300, 0.0))
    bank = torch.cat([blob(50, 0.0), blob(100, 2.5), blob(350, 12.0)])
    worst = Calibration.from_bank(bank, negation)
    fixed = Calibration.from_bank(bank, negation, cut="fixed-point")
    assert 0.1 <= fixed.unsafe_share < worst.unsafe_share
    assert abs(fixed.unsafe_share - 0.1) < abs(worst.unsafe_share - 0.1)
    with pytest.raises(ValueError, match="cut must be one of"):
        Calibration.from_bank(bank, negation, cut="median")
