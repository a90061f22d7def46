"""The one place where noise parametrisations are converted (pure math, shapes broadcast).

VE form (the seam):   x = x0 + sigma * n
VP form (models):     x_t = alpha * x0 + s * n,   so  x = x_t / alpha,  sigma = s / alpha
Flow matching:        x_t = (1 - s) x0 + s n,     v = n - x0

A model's output is one of four parametrisations (:data:`Prediction`): ``eps`` (the noise n), ``v`` (Salimans &
Ho's alpha n - s x0), ``x0``, or ``flow`` (the velocity n - x0); :func:`x0_from_prediction` and
:func:`prediction_from_x0` dispatch on the name.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Prediction = Literal["eps", "v", "x0", "flow"]
PREDICTIONS = ("eps", "v", "x0", "flow")
VPPrediction = Literal["eps", "v", "x0"]  # the outputs of a network on a VP schedule (flow matching is not one)
VP_PREDICTIONS = ("eps", "v", "x0")


def vp_from_ve(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, s) of the variance-preserving process with the same signal-to-noise ratio as VE ``sigma``."""
    alpha = torch.rsqrt(1 + sigma * sigma)
    return alpha, sigma * alpha


def ve_sigma_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for a discrete DDPM schedule."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """x0 = (x_t - s eps) / alpha."""
    return (x_t - s * eps) / alpha


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """eps = (x_t - alpha x0) / s."""
    return (x_t - alpha * x0) / s


def x0_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """x0 = alpha x_t - s v, for v = alpha eps - s x0 with alpha^2 + s^2 = 1 (Salimans & Ho)."""
    return alpha * x_t - s * v


def v_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """v = (alpha x_t - x0) / s, the inverse of :func:`x0_from_v` when alpha^2 + s^2 = 1."""
    return (alpha * x_t - x0) / s


def eps_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """eps = s x_t + alpha v, for v = alpha eps - s x0 and x_t = alpha x0 + s eps with alpha^2 + s^2 = 1."""
    return s * x_t + alpha * v


def v_from_eps(x_t: Tensor, eps: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """v = (eps - s x_t) / alpha, the inverse of :func:`eps_from_v`."""
    return (eps - s * x_t) / alpha


def v_from_eps_x0(eps: Tensor, x0: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """v = alpha eps - s x0 (Salimans & Ho 2022): the v-prediction target of a clean sample and its noise."""
    return alpha * eps - s * x0


def x0_from_flow(x_t: Tensor, velocity: Tensor, s: Tensor) -> Tensor:
    """x0 = x_t - s v for rectified flow x_t = (1 - s) x0 + s n, v = n - x0."""
    return x_t - s * velocity


def flow_from_x0(x_t: Tensor, x0: Tensor, s: Tensor) -> Tensor:
    """v = (x_t - x0) / s, the inverse of :func:`x0_from_flow`."""
    return (x_t - x0) / s


#: prediction -> (x0 from the output, the output from x0), each called as (x_t, value, alpha, s)
_BY_PREDICTION = {
    "eps": (x0_from_eps, eps_from_x0),
    "v": (x0_from_v, v_from_x0),
    "flow": (lambda x_t, out, alpha, s: x0_from_flow(x_t, out, s), lambda x_t, x0, alpha, s: flow_from_x0(x_t, x0, s)),
    "x0": (lambda x_t, out, alpha, s: out, lambda x_t, x0, alpha, s: x0),
}


def _conversions(prediction: str) -> tuple:
    if prediction not in _BY_PREDICTION:
        raise ValueError(f"unknown prediction type {prediction!r}; expected one of {', '.join(PREDICTIONS)}")
    return _BY_PREDICTION[prediction]


def x0_from_prediction(prediction: Prediction, x_t: Tensor, out: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """x0 from a model output ``out`` of parametrisation ``prediction`` at ``x_t = alpha x0 + s n``."""
    return _conversions(prediction)[0](x_t, out, alpha, s)


def prediction_from_x0(prediction: Prediction, x_t: Tensor | float, x0: Tensor, alpha: Tensor, s: Tensor) -> Tensor:
    """The model output of parametrisation ``prediction`` whose x0 is ``x0``, the inverse of
    :func:`x0_from_prediction`. Every conversion is affine in (x_t, x0), so ``x_t = 0`` maps a change of x0 to
    the change of the output."""
    return _conversions(prediction)[1](x_t, x0, alpha, s)


def batch_view(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample values (B,) to broadcast against ``like`` (B, ...)."""
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
