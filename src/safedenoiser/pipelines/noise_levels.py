"""Exact noise levels of a diffusers scheduler at the model call it is about to make.

For the model input ``x_in = alpha * x0 + s * n`` (VP form; flow matching: ``alpha = 1 - s``) every reader returns
``(alpha, s)`` as Python floats, read from the scheduler's own state at that call (docs/guide/diffusers.md):

* discrete VP (DDIM, DDPM, PNDM):               ``alpha^2 = alphas_cumprod[t]`` at the model's timestep ``t``;
* k-diffusion style (Euler, Euler ancestral, Heun, LMS): VE ``sigma = sigmas[step_index]``; the model input is
  already divided by ``sqrt(1 + sigma^2)``, so ``alpha = 1 / sqrt(1 + sigma^2)``, ``s = sigma * alpha``;
* multistep solvers (DPM-Solver++, DPM-Solver single-step, UniPC, DEIS): ``sigmas[step_index]`` through the
  scheduler's own ``_sigma_to_alpha_sigma_t``;
* flow matching (FlowMatchEuler, FlowMatchHeun; SD3, Flux): ``s = sigmas[step_index]``, ``alpha = 1 - s``.

Schedulers not listed are refused by name: their model input is not one of these forms (LCM / TCD boundary
conditions, KDPM2 / DPM-Solver-SDE interpolated sigmas, EDM preconditioning) or is unknown.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

NoiseReader = Callable[[Any, Any], "tuple[float, float]"]


class UnsupportedPipelineError(ValueError):
    """A pipeline, scheduler or call option the safe-denoiser hook cannot handle exactly."""


def _timestep_value(timestep: Any) -> float:
    """The (common) timestep of a model call, as a float on the host."""
    if isinstance(timestep, torch.Tensor):
        flat = timestep.detach().reshape(-1)
        return float(flat[0])
    return float(timestep)


def _step_index(scheduler: Any, timestep: Any) -> int:
    """The index the scheduler will use for this call: its ``step_index``, or, before its first ``step``,
    the index it is about to initialise (``begin_index`` or the position of ``timestep``)."""
    if scheduler.step_index is not None:
        return int(scheduler.step_index)
    if getattr(scheduler, "begin_index", None) is not None:
        return int(scheduler.begin_index)
    t = timestep.reshape(-1)[0] if isinstance(timestep, torch.Tensor) else timestep
    if isinstance(t, torch.Tensor):
        t = t.to(scheduler.timesteps.device)
    return int(scheduler.index_for_timestep(t))


def read_alphas_cumprod(scheduler: Any, timestep: Any) -> tuple[float, float]:
    """Discrete VP schedulers: ``alpha^2 = alphas_cumprod[t]``, ``s^2 = 1 - alpha^2``."""
    t = _timestep_value(timestep)
    if t != int(t):
        raise UnsupportedPipelineError(f"{type(scheduler).__name__} got a fractional timestep {t}; expected an integer")
    abar = float(scheduler.alphas_cumprod[int(t)])
    return math.sqrt(abar), math.sqrt(1.0 - abar)


def read_karras_sigma(scheduler: Any, timestep: Any) -> tuple[float, float]:
    """Euler-type schedulers: VE ``sigma = sigmas[step_index]``, input scaled by ``1 / sqrt(1 + sigma^2)``."""
    sigma = float(scheduler.sigmas[_step_index(scheduler, timestep)])
    alpha = 1.0 / math.sqrt(1.0 + sigma * sigma)
    return alpha, sigma * alpha


def read_solver_sigma(scheduler: Any, timestep: Any) -> tuple[float, float]:
    """DPM-Solver / UniPC / DEIS: the scheduler's own map of ``sigmas[step_index]`` to ``(alpha_t, sigma_t)``."""
    sigma = scheduler.sigmas[_step_index(scheduler, timestep)]
    alpha, s = scheduler._sigma_to_alpha_sigma_t(sigma)
    return float(alpha), float(s)


def read_flow_sigma(scheduler: Any, timestep: Any) -> tuple[float, float]:
    """Rectified flow: ``x_t = (1 - s) x0 + s n`` with ``s = sigmas[step_index]``."""
    s = float(scheduler.sigmas[_step_index(scheduler, timestep)])
    return 1.0 - s, s


READERS: dict[str, NoiseReader] = {
    "DDIMScheduler": read_alphas_cumprod,
    "DDPMScheduler": read_alphas_cumprod,
    "PNDMScheduler": read_alphas_cumprod,
    "EulerDiscreteScheduler": read_karras_sigma,
    "EulerAncestralDiscreteScheduler": read_karras_sigma,
    "HeunDiscreteScheduler": read_karras_sigma,
    "LMSDiscreteScheduler": read_karras_sigma,
    "DPMSolverMultistepScheduler": read_solver_sigma,
    "DPMSolverSinglestepScheduler": read_solver_sigma,
    "UniPCMultistepScheduler": read_solver_sigma,
    "DEISMultistepScheduler": read_solver_sigma,
    "FlowMatchEulerDiscreteScheduler": read_flow_sigma,
    "FlowMatchHeunDiscreteScheduler": read_flow_sigma,
}

#: The model output parametrisation each prediction type stands for.
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}


def scheduler_prediction(scheduler: Any) -> str:
    """'eps', 'v', 'x0' or 'flow' for a supported scheduler; raises :class:`UnsupportedPipelineError` otherwise."""
    name = type(scheduler).__name__
    if name not in READERS:
        raise UnsupportedPipelineError(
            f"scheduler {name} is not supported by the safe-denoiser hook (its noise level cannot be read exactly); "
            f"supported: {', '.join(sorted(READERS))}")
    if READERS[name] is read_flow_sigma:
        if getattr(scheduler.config, "invert_sigmas", False):
            raise UnsupportedPipelineError(f"{name} with invert_sigmas=True is not supported")
        return "flow"
    prediction = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise UnsupportedPipelineError(f"{name} has prediction_type={prediction!r}; supported: {', '.join(PREDICTIONS)}")
    if getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range"):
        raise UnsupportedPipelineError(f"{name} with a learned variance (variance_type="
                                       f"{scheduler.config.variance_type!r}) is not supported")
    if getattr(scheduler.config, "use_flow_sigmas", False):
        return "flow"
    return PREDICTIONS[prediction]


def noise_level(scheduler: Any, timestep: Any) -> tuple[float, float]:
    """``(alpha, s)`` of the model input at this call (see the module docstring)."""
    return READERS[type(scheduler).__name__](scheduler, timestep)


def ve_sigma_at_timestep(scheduler: Any, timestep: int) -> float:
    """VE ``sigma = sqrt((1 - abar_t) / abar_t)`` of a training timestep, e.g. for the paper's window t in [780, 1000]."""
    abar = float(scheduler.alphas_cumprod[int(timestep)])
    return math.sqrt((1.0 - abar) / abar)
