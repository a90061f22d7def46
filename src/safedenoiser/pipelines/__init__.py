"""The safe denoiser on diffusers pipelines: a forward hook, negation sets from images, generation at scale.

The names below are imported on first use (PEP 562), so the ``negation`` / ``generate`` / ``evaluate`` commands
register without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SafeDenoiserHook": "hook", "attach_safe_denoiser": "attach", "negation_differences": "hook", "pipeline_model": "hook",
    "vae_fingerprint": "hook",
    "READERS": "noise_levels", "UnsupportedPipelineError": "noise_levels", "noise_level": "noise_levels",
    "scheduler_prediction": "noise_levels", "ve_sigma_at_timestep": "noise_levels",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .attach import attach_safe_denoiser
    from .hook import SafeDenoiserHook, negation_differences, pipeline_model, vae_fingerprint
    from .noise_levels import READERS, UnsupportedPipelineError, noise_level, scheduler_prediction, ve_sigma_at_timestep
