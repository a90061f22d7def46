"""The conditional mode's text-direction rule for flagged requests under classifier-free guidance (issue 19 item 2):
``guided(x, sigma, x0_u, x0_c, w)`` against a plain re-derivation, bit-identity where nothing is flagged, and the
main knob ``guard`` moving the result."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

from test_conditional import conditional_mixture, explicit_projection  # noqa: E402

from safedenoiser import make_correction  # noqa: E402


def kernel_mean(q, points, h):
    """Softmax-weighted mean of ``points`` around each row of ``q`` (a plain loop)."""
    return torch.stack([(torch.softmax(-((row - points) ** 2).sum(1) / (2 * h**2), 0)[:, None] * points).sum(0) for row in q])


def inputs(model, sigma=0.8, w=3.0):
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return x, sigma, model.denoise(x, sigma, None), model.denoise(x, sigma, labels), w


def decided(log_odds):
    """The decision gate: sigmoid(L) where L > 0, else 0."""
    return torch.where(log_odds > 0, torch.sigmoid(log_odds), torch.zeros_like(log_odds))


def expected(x, sigma, x0, negation, reference, flag, dropped):
    """Projection on d = E_neg - E_ref, then the blend x0' + flag clip(share - (1 - dropped), 0, 1) (E_ref - x0'),
    share measured on ``x0`` (the prediction after the text direction was removed); plain loops."""
    e_n, e_r = kernel_mean(x, negation.flat, sigma), kernel_mean(x, reference.flat, sigma)
    d = e_n - e_r
    share = ((x0 - e_r) * d).sum(1) / (d * d).sum(1)
    out = explicit_projection(x, sigma, x0, negation.flat, reference.flat, flag)
    return out + (flag * (share - (1 - dropped)).clamp(0, 1))[:, None] * (e_r - out)


def project_on_axis(x, sigma, T, negation, reference):
    """The positive component of T along d = E_neg - E_ref."""
    d = kernel_mean(x, negation.flat, sigma) - kernel_mean(x, reference.flat, sigma)
    return d * ((T * d).sum(1) / (d * d).sum(1)).clamp(min=0)[:, None]


@pytest.mark.parametrize("text", ["drop", "project"])
@pytest.mark.parametrize("guard", [0.4, 1.0])
def test_text_rule_matches_its_formula(text, guard):
    """x0' = blend(projection(g - guard f T)), f the decision gate on the latched classifier log-odds read at the full
    guided x0 g, T the text direction w (x0_c - x0_u) (drop) or its positive component along d = E_neg - E_ref
    (project); the blend pulls by the share beyond 1 - guard f."""
    model, negation, reference = conditional_mixture(4)
    x, sigma, x0_u, x0_c, w = inputs(model)
    seen = {}
    correction = make_correction(negation, "conditional", reference=reference, text=text, guard=guard,
                                 callback=seen.update)
    got = correction.guided(x, sigma, x0_u, x0_c, w)
    guided = x0_u + w * (x0_c - x0_u)
    probe = {}
    make_correction(negation, "conditional", reference=reference, callback=probe.update)(x, sigma, guided)
    torch.testing.assert_close(seen["classifier_log_odds"], probe["classifier_log_odds"])  # read at the guided x0
    flag = decided(seen["classifier_log_odds"])
    assert bool((flag > 0).any()) and bool((flag == 0).any())  # both kinds of rows are checked
    T = w * (x0_c - x0_u)
    if text == "project":
        T = project_on_axis(x, sigma, T, negation, reference)
    want = expected(x, sigma, guided - (guard * flag)[:, None] * T, negation, reference, flag, guard * flag)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(seen["dropped"], guard * flag)


def test_unflagged_rows_are_bit_identical_and_guard_zero_is_version_3():
    model, negation, reference = conditional_mixture(4)
    x, sigma, x0_u, x0_c, w = inputs(model)
    guided = x0_u + w * (x0_c - x0_u)
    quiet = make_correction(negation, "conditional", reference=reference, gain=1e-300)  # no row decides 'unsafe'
    assert torch.equal(quiet.guided(x, sigma, x0_u, x0_c, w), guided)
    v3 = make_correction(negation, "conditional", reference=reference)(x, sigma, guided)
    fresh = make_correction(negation, "conditional", reference=reference, guard=0.0)
    assert torch.equal(fresh.guided(x, sigma, x0_u, x0_c, w), v3)
    loud = make_correction(negation, "conditional", reference=reference, gain=1e6)
    assert not torch.equal(loud.guided(x, sigma, x0_u, x0_c, w), v3)
    for bad in ({"text": "all"}, {"text": "substitute"}, {"guard": 1.5}, {"guard": -0.1}):
        with pytest.raises(ValueError, match="text|guard"):
            make_correction(negation, "conditional", reference=reference, **bad)


def test_default_stops_explicit_requests_in_64d_and_leaves_safe_classes():
    """64-D mixture, CFG 3: the default (drop, guard 1) keeps explicit requests off the negated component; safe
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


@pytest.mark.parametrize("text,negative", [("drop", "drop"), ("project", "drop"), ("drop", "steer")])
def test_null_branch_replaces_the_base_of_flagged_rows(text, negative):
    """With a negative prompt (``null`` gives the empty prompt's x0 x0_e for the rows asked), a flagged row's text
    direction is T = g - x0_e: drop lands on x0_e, not on the negative prompt's x0_u; unflagged rows are untouched and
    ``null`` is asked for flagged rows only. ``negative="steer"``: T = x0_u - x0_e, the base replaced and the
    direction away from the negative prompt kept (x0_e + w (x0_c - x0_u) at guard 1)."""
    model, negation, reference = conditional_mixture(4)
    x, sigma, x0_u, x0_c, w = inputs(model)
    x0_e = model.denoise(x, sigma, None) + 0.3
    asked = []

    def null(rows):
        asked.append(rows.clone())
        return torch.where(rows[:, None], x0_e, x0_u)

    seen = {}
    correction = make_correction(negation, "conditional", reference=reference, text=text, negative=negative,
                                 steer=w, callback=seen.update)  # steer = w: version 5's negative="steer"
    got = correction.guided(x, sigma, x0_u, x0_c, w, null=null)
    guided = x0_u + w * (x0_c - x0_u)
    flag = decided(seen["classifier_log_odds"])
    assert len(asked) == 1 and torch.equal(asked[0], flag > 0) and bool((flag == 0).any())
    T = torch.where((flag > 0)[:, None], (x0_u if negative == "steer" else guided) - x0_e, w * (x0_c - x0_u))
    if text == "project":
        T = project_on_axis(x, sigma, T, negation, reference)
    want = expected(x, sigma, guided - flag[:, None] * T, negation, reference, flag, flag)
    torch.testing.assert_close(got, want)
    quiet = make_correction(negation, "conditional", reference=reference, gain=1e-300)
    assert torch.equal(quiet.guided(x, sigma, x0_u, x0_c, w, null=null), guided) and len(asked) == 1


@pytest.mark.parametrize("steer", [1.0, 5.0])
@pytest.mark.parametrize("with_null", [False, True])
def test_concept_steers_flagged_rows_away_from_the_concept(steer, with_null):
    """Version 6: with ``concept`` (``concept(rows)`` the concept prompt's x0 x0_k, asked for flagged rows only) a
    flagged row's text direction becomes T' = g - x0_e - s (x0_c - x0_k), i.e. x0_e + s (x0_c - x0_k) at guard 1
    (s = steer, default 1), x0_e the empty prompt's x0 (``null``, else x0_u); unflagged rows untouched."""
    model, negation, reference = conditional_mixture(4)
    x, sigma, x0_u, x0_c, w = inputs(model)
    x0_k, x0_e = x0_c - 0.2, model.denoise(x, sigma, None) + 0.3
    asked = []

    def concept(rows):
        asked.append(rows.clone())
        return torch.where(rows[:, None], x0_k, x0_u)

    null = (lambda rows: torch.where(rows[:, None], x0_e, x0_u)) if with_null else None
    seen = {}
    correction = make_correction(negation, "conditional", reference=reference, concept="the negated thing",
                                 steer=steer, callback=seen.update)
    got = correction.guided(x, sigma, x0_u, x0_c, w, null=null, concept=concept)
    guided = x0_u + w * (x0_c - x0_u)
    flag = decided(seen["classifier_log_odds"])
    assert len(asked) == 1 and torch.equal(asked[0], flag > 0) and bool((flag == 0).any())
    base = x0_e if with_null else x0_u
    s = steer
    T = torch.where((flag > 0)[:, None], guided - base - s * (x0_c - x0_k), w * (x0_c - x0_u))
    want = expected(x, sigma, guided - flag[:, None] * T, negation, reference, flag, flag)
    torch.testing.assert_close(got, want)
    quiet = make_correction(negation, "conditional", reference=reference, gain=1e-300, concept="the negated thing")
    assert torch.equal(quiet.guided(x, sigma, x0_u, x0_c, w, null=null, concept=concept), guided) and len(asked) == 1


def test_steer_scale_of_the_negative_prompt_and_bad_concepts():
    """``negative="steer"`` with ``steer`` s: x0_e + s (x0_c - x0_u) for flagged rows (x0_u the negative prompt's);
    s = w is version 5 exactly (default s = 1). Bad ``concept`` / ``steer`` values are refused in one line."""
    model, negation, reference = conditional_mixture(4)
    x, sigma, x0_u, x0_c, w = inputs(model)
    x0_e = model.denoise(x, sigma, None) + 0.3

    def null(rows):
        return torch.where(rows[:, None], x0_e, x0_u)

    def run(**knobs):
        seen = {}
        out = make_correction(negation, "conditional", reference=reference, negative="steer", callback=seen.update,
                              **knobs).guided(x, sigma, x0_u, x0_c, w, null=null)
        return out, decided(seen["classifier_log_odds"])

    assert torch.equal(run()[0], run(steer=1.0)[0]) and not torch.equal(run()[0], run(steer=w)[0])
    got, flag = run(steer=1.5)
    guided = x0_u + w * (x0_c - x0_u)
    T = torch.where((flag > 0)[:, None], guided - x0_e - 1.5 * (x0_c - x0_u), w * (x0_c - x0_u))
    torch.testing.assert_close(got, expected(x, sigma, guided - flag[:, None] * T, negation, reference, flag, flag))
    from safedenoiser.methods.conditional import SafeClassifierFreeGuidance

    with pytest.raises(ValueError, match="concept='trousers' needs a text pipeline"):
        SafeClassifierFreeGuidance(model, make_correction(negation, "conditional", reference=reference,
                                                          concept="trousers"), 3.0)
    for bad in ({"concept": ""}, {"concept": 3}, {"steer": -1.0}, {"steer": float("nan")}):
        with pytest.raises(ValueError, match="concept|steer"):
            make_correction(negation, "conditional", reference=reference, **bad)
