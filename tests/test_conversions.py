"""The one home of the prediction conversions (eps / v / x0 / flow), against the written-out formulas."""

from __future__ import annotations

import pytest
import torch

from safedenoiser.models import conversions as c

EXPLICIT_X0 = {  # written out from x_t = alpha x0 + s n (flow: alpha = 1 - s), models/conversions.py's docstring
    "eps": lambda x, out, a, s: (x - s * out) / a,
    "v": lambda x, out, a, s: a * x - s * out,
    "flow": lambda x, out, a, s: x - s * out,
    "x0": lambda x, out, a, s: out,
}


@pytest.mark.parametrize("prediction", c.PREDICTIONS)
def test_round_trip_and_affine_delta(prediction):
    gen = torch.Generator().manual_seed(0)
    x, out, delta = (torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    alpha, s = c.vp_from_ve(torch.tensor(0.8, dtype=torch.float64))
    if prediction == "flow":
        alpha = 1 - s
    x0 = c.x0_from_prediction(prediction, x, out, alpha, s)
    assert torch.allclose(x0, EXPLICIT_X0[prediction](x, out, alpha, s), atol=1e-12)
    assert torch.allclose(c.prediction_from_x0(prediction, x, x0, alpha, s), out, atol=1e-12)
    # the hook adds prediction_from_x0(0, delta) to the output: its x0 moves by exactly delta
    moved = c.x0_from_prediction(prediction, x, out + c.prediction_from_x0(prediction, 0.0, delta, alpha, s), alpha, s)
    assert torch.allclose(moved, x0 + delta, atol=1e-12)


def test_unknown_prediction_is_named():
    with pytest.raises(ValueError, match="unknown prediction type 'sample'"):
        c.x0_from_prediction("sample", torch.zeros(1), torch.zeros(1), 1.0, 0.5)


def test_eps_v_pair():
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    alpha, s = c.vp_from_ve(torch.tensor(1.3, dtype=torch.float64))
    x_t, v = alpha * x0 + s * eps, c.v_from_eps_x0(eps, x0, alpha, s)
    assert torch.allclose(c.eps_from_v(x_t, v, alpha, s), eps, atol=1e-12)
    assert torch.allclose(c.v_from_eps(x_t, eps, alpha, s), v, atol=1e-12)
    assert torch.allclose(c.x0_from_v(x_t, v, alpha, s), x0, atol=1e-12)
