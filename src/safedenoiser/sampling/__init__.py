"""Samplers are plain functions over a VE sigma schedule that ends in 0."""

from .noise import SeededNoise, initial_noise
from .rejection import RejectionResult, rejection_sample
from .samplers import SAMPLERS, NoiseSampler, ancestral, ddim, euler, get_sampler, heun, sample, to_d
from .schedules import ScheduleError, check_schedule, karras_sigmas, vp_sigmas

__all__ = [
    "SAMPLERS", "NoiseSampler", "RejectionResult", "ScheduleError", "SeededNoise", "ancestral", "check_schedule", "ddim",
    "euler", "get_sampler", "heun", "initial_noise", "karras_sigmas", "rejection_sample", "sample", "to_d", "vp_sigmas",
]
