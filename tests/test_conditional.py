"""The conditional mode against exact class-conditional Gaussian mixtures (closed-form conditional and safe denoisers)."""

from __future__ import annotations

import math

import pytest
import torch

from safedenoiser import NegationSet, karras_sigmas, make_correction, make_mixture
from safedenoiser.methods import MODES, ConditionalCorrection, ReferenceSet, ReferenceSetError, posterior_spread
from safedenoiser.methods.conditional import SafeClassifierFreeGuidance
from safedenoiser.metrics import median_bandwidths, mmd
from safedenoiser.models.conditional_mixture import ConditionalGaussianMixture
from safedenoiser.sampling.samplers import heun

torch.set_num_threads(1)
UNSAFE = 0  # component 0 is negated
EXPLICIT, PARTLY, SAFE_A, SAFE_B = range(4)  # class 0 = only component 0; class 1 = components 0, 1, 2; 2 and 3 safe


def conditional_mixture(dim: int) -> tuple[ConditionalGaussianMixture, NegationSet, ReferenceSet]:
    comp = make_mixture(dim, 8, std=0.15, seed=0)
    weights = torch.zeros(4, 8, dtype=torch.float64)
    weights[EXPLICIT, 0] = 1
    weights[PARTLY, [0, 1, 2]] = torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64)
    weights[SAFE_A, [3, 4]] = 0.5
    weights[SAFE_B, [5, 6, 7]] = 1 / 3
    model = ConditionalGaussianMixture(comp, weights, unsafe=[UNSAFE])
    gen = torch.Generator().manual_seed(0)
    negation = NegationSet(comp.restrict([UNSAFE]).sample(500, gen)[0])
    reference = ReferenceSet(model.safe_marginal().sample(800, gen)[0])  # allowed content, shared by every class
    return model, negation, reference


def sample_class(denoiser, dim: int, c: int, n: int = 200, steps: int = 30) -> torch.Tensor:
    sigmas = karras_sigmas(steps, 0.002, 10.0)
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(100 + c), dtype=torch.float64) * sigmas[0]
    return heun(denoiser, x, sigmas, cond={"class_labels": torch.full((n,), c)})


def mmd_to(samples: torch.Tensor, target) -> float:
    exact = target.sample(len(samples), torch.Generator().manual_seed(7))[0]
    return mmd(samples, exact, median_bandwidths(exact))


# -- the oracle -------------------------------------------------------------------------------------------------
def test_conditional_mixture_oracle():
    model, _, _ = conditional_mixture(2)
    x = torch.randn(6, 2, dtype=torch.float64)
    sigma = torch.full((6,), 0.7, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 1, -1])
    got = model.denoise(x, sigma, labels)
    for i, c in enumerate(labels.tolist()):
        mix = model.marginal() if c < 0 else model.class_mixture(c)
        torch.testing.assert_close(got[i], mix.denoise(x[i : i + 1], 0.7)[0])
    # CFG with w = 1 is the conditional; the null branch is the class-prior average of the classes
    torch.testing.assert_close(model.guided(1.0)(x, sigma, labels), got)
    null_w = sum(model.class_prior[c] * model.class_weights[c] for c in range(4))
    torch.testing.assert_close(model.null_weights, null_w)
    assert model.safe_class(EXPLICIT) is None
    safe = model.safe_class(PARTLY)
    torch.testing.assert_close(safe.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))


# -- knobs ----------------------------------------------------------------------------------------------------------
def test_conditional_mode_knobs_and_removed_ones():
    """Version 5 keeps one estimator (projection), one gate (decision), one blend; the knobs of earlier versions are
    refused by name (docs/conditional.md records them)."""
    model, negation, reference = conditional_mixture(4)
    x = torch.randn(5, 4, dtype=torch.float64)
    x0 = model.denoise(x, 0.6, torch.tensor([0, 1, 2, 3, 0]))
    seen = {}
    correction = make_correction(negation, "conditional", reference=reference, gain=2.0, sigma_data=0.4,
                                 callback=seen.update)
    correction(x, 0.6, x0)
    assert {"weight", "log_odds", "bandwidth", "active", "sigma", "share", "flag", "dropped"} <= set(seen)
    torch.testing.assert_close(seen["bandwidth"], posterior_spread(torch.full((5,), 0.6, dtype=torch.float64), 0.4))
    assert "conditional" in MODES and isinstance(correction, ConditionalCorrection)
    assert correction.config["gain"] == 2.0 and correction.config["sigma_data"] == 0.4
    assert (correction.guard, correction.text) == (1.0, "drop")
    for knob, value in (("estimator", "x0"), ("gate", "latch"), ("update", "substitute"), ("heading", 4.0),
                        ("blend", "share")):  # version 1-4 knobs, recorded in docs/conditional.md
        with pytest.raises(ValueError, match=f"does not take {knob}"):
            make_correction(negation, "conditional", reference=reference, **{knob: value})
    off = make_correction(negation, "conditional", reference=reference, gain=0.0)
    assert off(x, 0.6, x0) is x0  # gain 0: bit-identical


# -- the reference set ------------------------------------------------------------------------------------------
def test_reference_set_validation(tmp_path):
    _, negation, reference = conditional_mixture(2)
    for bad, match in [(torch.empty(0, 2), "empty"), (torch.tensor([[0.0, math.nan]]), "NaN"),
                       (torch.ones(3, 2, dtype=torch.long), "floating"), (torch.ones(3), "shape")]:
        with pytest.raises(ReferenceSetError, match=match):
            ReferenceSet(bad)
    with pytest.raises(ReferenceSetError, match="entirely covered by the negation set"):
        make_correction(negation, "conditional", reference=ReferenceSet(negation.data.clone()))
    with pytest.raises(ReferenceSetError, match="item shape"):
        make_correction(negation, "conditional", reference=ReferenceSet(torch.randn(5, 3)))
    path = tmp_path / "ref.safetensors"
    reference.save(path)
    loaded = ReferenceSet.load(path)
    assert torch.equal(loaded.data, reference.data) and loaded.metadata["role"] == "reference"
    samples = torch.cat([negation.data[:50], reference.data[:200]])  # model samples, 20% unsafe
    kept = ReferenceSet.from_samples(samples, negation)
    assert kept.metadata["dropped_covered"] >= 45 and len(kept) >= 190


# -- sampling: the exact answers -------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 64])
def test_conditional_mode_on_exact_mixture(dim):
    """CFG w = 1 (the exact conditional): explicit requests and the partly unsafe class lose their unsafe content,
    the partly unsafe class moves towards the exact safe conditional, safe classes stay (nearly) as they were."""
    model, negation, reference = conditional_mixture(dim)
    plain = model.guided(1.0)
    safe = SafeClassifierFreeGuidance(model, make_correction(negation, "conditional", reference=reference), 1.0)
    out = {c: sample_class(safe, dim, c) for c in range(4)}
    base = {c: sample_class(plain, dim, c) for c in range(4)}
    unsafe = {c: float((model.component_of(out[c]) == UNSAFE).double().mean()) for c in range(4)}
    assert float((model.component_of(base[EXPLICIT]) == UNSAFE).double().mean()) > 0.95
    assert unsafe[EXPLICIT] <= 0.1 and unsafe[PARTLY] <= 0.02, unsafe
    assert mmd_to(out[PARTLY], model.safe_class(PARTLY)) < 0.8 * mmd_to(base[PARTLY], model.safe_class(PARTLY))
    # an explicit request receives allowed content, spread over the allowed components (at least uniform near the request)
    comp = model.component_of(out[EXPLICIT])
    nearest = model.components.means[1:].sub(model.components.means[0]).norm(dim=1).argsort()[:2] + 1
    assert float(torch.isin(comp, nearest).double().mean()) > 0.25
    for c in (SAFE_A, SAFE_B):  # the decision gate leaves safe classes as they were (version 2: 64-D MMD 0.20 vs 0.11)
        assert unsafe[c] <= 0.02
        assert mmd_to(out[c], model.safe_class(c)) < mmd_to(base[c], model.safe_class(c)) + (0.2 if dim == 2 else 0.03)


def test_guided_requests_in_two_dimensions():
    """CFG w = 2 (2-D): explicit and partly unsafe requests lose their unsafe content; flagged requests lose CFG's text
    direction, so explicit ones spread over the allowed content (2 of 7 allowed components are the neighbours of the
    negated one: 0.29 expected)."""
    model, negation, reference = conditional_mixture(2)
    safe = SafeClassifierFreeGuidance(model, make_correction(negation, "conditional", reference=reference), 2.0)
    explicit, partly = sample_class(safe, 2, EXPLICIT), sample_class(safe, 2, PARTLY)
    assert float((model.component_of(explicit) == UNSAFE).double().mean()) <= 0.02
    assert float((model.component_of(partly) == UNSAFE).double().mean()) <= 0.02
    assert float(torch.isin(model.component_of(explicit), torch.tensor([1, 7])).double().mean()) > 0.2


# -- the default estimator: projection on the unsafe axis, gated by a per-request latch ---------------------------
def explicit_projection(x, sigma, x0, neg, ref, flag):
    """x0 - r (E_neg - E_ref), r = flag * max(0, <x0 - E_ref, E_neg - E_ref> / |E_neg - E_ref|^2) (a plain loop)."""
    out = []
    for b in range(x.shape[0]):
        e_n = (torch.softmax(-((x[b] - neg) ** 2).sum(1) / (2 * sigma**2), 0)[:, None] * neg).sum(0)
        e_r = (torch.softmax(-((x[b] - ref) ** 2).sum(1) / (2 * sigma**2), 0)[:, None] * ref).sum(0)
        d = e_n - e_r
        share = max(0.0, float((x0[b] - e_r) @ d / (d @ d)))
        out.append(x0[b] - flag[b] * share * d)
    return torch.stack(out)


def decided(log_odds):
    return torch.where(log_odds > 0, torch.sigmoid(log_odds), torch.zeros_like(log_odds))


def test_projection_latch_matches_explicit_formula_and_latches():
    """Without guidance: x0' = projection + overshoot blend (share beyond 1), flag = the decision gate on the running
    maximum of the classifier log-odds; the latch restarts on a new run and keeps one state per stream."""
    model, negation, reference = conditional_mixture(4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    seen = {}
    correction = make_correction(negation, "conditional", reference=reference, callback=seen.update)
    x_hi = 3.0 * torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    correction(x_hi, 3.0, model.denoise(x_hi, 3.0, labels))
    first = seen["classifier_log_odds"].clone()
    torch.testing.assert_close(seen["flag"], decided(first))
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x0 = model.denoise(x, 0.6, labels)
    got = correction(x, 0.6, x0)
    latched = torch.maximum(first, seen["classifier_log_odds"])  # the running maximum over the trajectory
    flag = decided(latched)
    assert bool((flag > 0).any()) and bool((flag == 0).any())
    torch.testing.assert_close(seen["flag"], flag)
    want = explicit_projection(x, 0.6, x0, negation.flat, reference.flat, flag)
    e_r = reference.moments(x, torch.full((5,), 0.6, dtype=torch.float64)).mean
    want = want + (flag * (seen["share"] - 1.0).clamp(0, 1))[:, None] * (e_r - want)
    torch.testing.assert_close(got, want)
    assert torch.equal(got[flag == 0], x0[flag == 0])
    # sigma going up (a new run) or another batch size resets the latch; reset() forgets it
    correction(x, 0.9, x0)
    torch.testing.assert_close(seen["flag"], decided(seen["classifier_log_odds"]))
    correction(x[:3], 0.5, x0[:3])
    torch.testing.assert_close(seen["flag"], decided(seen["classifier_log_odds"]))
    correction(x, 0.4, x0)
    correction.reset()
    correction(x, 0.3, x0)
    torch.testing.assert_close(seen["flag"], decided(seen["classifier_log_odds"]))
    # the null branch keeps its own state
    with correction.stream("null"):
        correction(x_hi, 3.0, x0)
    assert set(correction._states) == {"default", "null"}


def test_explicit_requests_stopped_in_64d_with_guidance():
    """The case the first version lost (98% unsafe): 64-D, CFG w = 2. The default (projection + latch on the guided
    prediction) stops explicit requests and the unsafe part of the partly unsafe class; safe classes stay unsafe-free."""
    model, negation, reference = conditional_mixture(64)
    safe = SafeClassifierFreeGuidance(model, make_correction(negation, "conditional", reference=reference), 2.0)
    assert safe.where == "guided"
    out = {c: sample_class(safe, 64, c, n=100, steps=20) for c in range(4)}
    unsafe = {c: float((model.component_of(out[c]) == UNSAFE).double().mean()) for c in range(4)}
    assert unsafe[EXPLICIT] <= 0.05 and unsafe[PARTLY] <= 0.02 and unsafe[SAFE_A] == unsafe[SAFE_B] == 0, unsafe


def mixture_table(settings: dict, dims=(2, 64), guidances=(1.0, 2.0)) -> None:
    """Print the docs/conditional.md mixture table: unsafe share and MMD to the exact safe conditional per class (for the
    explicit class: the share on the two allowed components nearest the negated one)."""
    for dim in dims:
        model, negation, reference = conditional_mixture(dim)
        nearest = (model.components.means[1:].sub(model.components.means[0]).norm(dim=1).argsort()[:2] + 1)
        for w in guidances:
            for name, (knobs, where) in settings.items():
                den = model.guided(w) if knobs is None else SafeClassifierFreeGuidance(
                    model, make_correction(negation, "conditional", reference=reference, **knobs), w, where=where)
                cells = []
                for c in range(4):
                    out = sample_class(den, dim, c)
                    comp = model.component_of(out)
                    target = model.safe_class(c)
                    second = mmd_to(out, target) if target is not None else float(torch.isin(comp, nearest).double().mean())
                    cells.append(f"{float((comp == UNSAFE).double().mean()):.0%} / {second:.2f}")
                print(f"| {dim}-D, w = {w:g} | {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":  # python tests/test_conditional.py
    mixture_table({"plain": (None, "auto"), "v5 default (drop, guard 1)": ({}, "auto"),
                   "guard 0 (version 3)": ({"guard": 0.0}, "auto")})
