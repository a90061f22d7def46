"""The safe denoiser on diffusers pipelines: a forward hook, negation sets from images, generation at scale."""

from .hook import SafeDenoiserHook, attach_safe_denoiser, negation_differences, pipeline_model, vae_fingerprint
from .noise_levels import READERS, UnsupportedPipelineError, noise_level, scheduler_prediction, ve_sigma_at_timestep

__all__ = [
    "READERS", "SafeDenoiserHook", "UnsupportedPipelineError", "attach_safe_denoiser", "negation_differences",
    "noise_level", "pipeline_model", "scheduler_prediction", "vae_fingerprint", "ve_sigma_at_timestep",
]
