"""The conditional mode's text-direction rule for flagged requests under classifier-free guidance (issue 19 item 2):
``guided(x, sigma, x0_u, x0_c, w)`` against a plain re-derivation, bit-identity where nothing is flagged, and the
main knob ``guard`` moving the result."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

from test_conditional import conditional_mixture, explicit_projection  # noqa: E402

from safedenoiser import make_correction  # noqa: E402
from safedenoiser.methods import posterior_spread  # noqa: E402


def kernel_mean(q, points, h):
    """Softmax-weighted mean of ``points`` around each row of ``q`` (a plain loop)."""
    return torch.stack([(torch.softmax(-((row - points) ** 2).sum(1) / (2 * h**2), 0)[:, None] * points).sum(0) for row in q])


def inputs(model, sigma=0.8, w=3.0):
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return x, sigma, model.denoise(x, sigma, None), model.denoise(x, sigma, labels), w


@pytest.mark.parametrize("text", ["drop", "project", "substitute"])
@pytest.mark.parametrize("guard", [0.4, 1.0])
def test_text_rule_matches_its_formula(text, guard):
    """gate 'latch' (every row flagged by sigmoid(L)), blend 'none': x0' = projection(g - guard f T), with T the text
    direction w (x0_c - x0_u) (drop), its positive component along d = E_neg - E_ref (project), or
    w (x0_c - E_ref[x0 | x0_c]) at the classifier's bandwidth (substitute); the latch reads the full guided x0."""
    model, negation, reference = conditional_mixture(4)
    x, sigma, x0_u, x0_c, w = inputs(model)
    seen = {}
    correction = make_correction(negation, "conditional", reference=reference, gate="latch", blend="none", text=text,
                                 guard=guard, callback=seen.update)
    got = correction.guided(x, sigma, x0_u, x0_c, w)
    guided = x0_u + w * (x0_c - x0_u)
    probe = {}
    make_correction(negation, "conditional", reference=reference, gate="latch", blend="none",
                    callback=probe.update)(x, sigma, guided)
    torch.testing.assert_close(seen["classifier_log_odds"], probe["classifier_log_odds"])  # read at the guided x0
    flag = torch.sigmoid(seen["classifier_log_odds"])
    T = w * (x0_c - x0_u)
    e_n, e_r = kernel_mean(x, negation.flat, sigma), kernel_mean(x, reference.flat, sigma)
    if text == "project":
        d = e_n - e_r
        T = d * ((T * d).sum(1) / (d * d).sum(1)).clamp(min=0)[:, None]
    elif text == "substitute":
        h = float(posterior_spread(torch.tensor(sigma), 0.5))
        T = w * (x0_c - kernel_mean(x0_c, reference.flat, h))
    want = explicit_projection(x, sigma, guided - (guard * flag)[:, None] * T, negation.flat, reference.flat, flag)
    torch.testing.assert_close(got, want)


def test_unflagged_rows_are_bit_identical_and_guard_zero_is_version_3():
    model, negation, reference = conditional_mixture(4)
    x, sigma, x0_u, x0_c, w = inputs(model)
    guided = x0_u + w * (x0_c - x0_u)
    quiet = make_correction(negation, "conditional", reference=reference, gain=1e-300)  # no row decides 'unsafe'
    assert torch.equal(quiet.guided(x, sigma, x0_u, x0_c, w), guided)
    v3 = make_correction(negation, "conditional", reference=reference)(x, sigma, guided)
    for knobs in ({"guard": 0.0}, {"text": "keep"}):
        fresh = make_correction(negation, "conditional", reference=reference, **knobs)
        assert torch.equal(fresh.guided(x, sigma, x0_u, x0_c, w), v3)
    loud = make_correction(negation, "conditional", reference=reference, gain=1e6)
    assert not torch.equal(loud.guided(x, sigma, x0_u, x0_c, w), v3)
    for bad in ({"text": "all"}, {"guard": 1.5}, {"guard": -0.1}):
        with pytest.raises(ValueError, match="text|guard"):
            make_correction(negation, "conditional", reference=reference, **bad)


def test_default_stops_explicit_requests_in_64d_and_leaves_safe_classes():
    """64-D mixture, CFG 3: the default (substitute, guard 1) keeps explicit requests off the negated component; safe
    classes are identical at guard 0 and 1 (never flagged). (On mixtures every guard stops them; the trade-off the
    guard moves shows on images: docs/conditional.md.)"""
    from safedenoiser.methods.conditional import SafeClassifierFreeGuidance

    from test_conditional import EXPLICIT, SAFE_A, UNSAFE, sample_class

    model, negation, reference = conditional_mixture(64)
    out = {}
    for guard in (0.0, 1.0):
        safe = SafeClassifierFreeGuidance(model, make_correction(negation, "conditional", reference=reference,
                                                                 guard=guard), 3.0)
        out[guard] = {c: sample_class(safe, 64, c, n=60, steps=12) for c in (EXPLICIT, SAFE_A)}
    assert torch.equal(out[0.0][SAFE_A], out[1.0][SAFE_A])
    unsafe = {g: float((model.component_of(o[EXPLICIT]) == UNSAFE).double().mean()) for g, o in out.items()}
    assert unsafe[1.0] <= 0.02, unsafe
