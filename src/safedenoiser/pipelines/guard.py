"""Scheduler guards of the safe-denoiser hook: refuse ``step`` options under which the scheduler's x0 is not the
model's (churn noise, per-token sigmas), and start every pipeline call with fresh per-run state (``set_timesteps``,
which every diffusers pipeline calls first, runs ``on_new_run``, so a call stopped by an exception leaves nothing to
the next one). Instance wrappers, removed by :meth:`SchedulerGuard.release`."""

from __future__ import annotations

import functools
from typing import Any, Callable

from .noise_levels import UnsupportedPipelineError

GUARDED = ("step", "set_timesteps")


class SchedulerGuard:
    """Guards schedulers on first sight (:meth:`ensure`); ``on_new_run`` is called when a scheduler is guarded and at
    every ``set_timesteps``."""

    def __init__(self, on_new_run: Callable[[], None]):
        self.on_new_run = on_new_run
        self._guarded: dict[int, tuple[Any, dict[str, Any]]] = {}

    def ensure(self, scheduler: Any) -> None:
        if id(scheduler) not in self._guarded:
            self.guard(scheduler)

    def guard(self, scheduler: Any) -> None:
        original, original_set = scheduler.step, scheduler.set_timesteps
        previous = {key: scheduler.__dict__.get(key) for key in GUARDED}  # others' instance wrappers
        name = type(scheduler).__name__
        on_new_run = self.on_new_run
        on_new_run()

        @functools.wraps(original_set)  # pipelines inspect the signatures of set_timesteps and step
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            on_new_run()
            return original_set(*args, **kwargs)

        @functools.wraps(original)
        def step(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("s_churn", 0.0):
                raise UnsupportedPipelineError(f"{name}.step(s_churn={kwargs['s_churn']}) adds churn noise and evaluates "
                                               "x0 at an inflated sigma; the safe-denoiser hook needs s_churn=0")
            if kwargs.get("per_token_timesteps") is not None:
                raise UnsupportedPipelineError(f"{name}.step(per_token_timesteps=...) is not supported by the hook")
            return original(*args, **kwargs)

        scheduler.step, scheduler.set_timesteps = step, set_timesteps
        self._guarded[id(scheduler)] = (scheduler, previous)

    def release(self) -> None:
        """Restore every guarded scheduler's ``step`` and ``set_timesteps`` (and the wrappers others had put there)."""
        for scheduler, previous in self._guarded.values():
            for name, method in previous.items():
                if method is None:
                    scheduler.__dict__.pop(name, None)
                else:
                    setattr(scheduler, name, method)
        self._guarded.clear()
