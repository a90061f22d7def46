"""Denoiser transforms: a correction maps the model's x0 to a corrected x0 at (x, sigma).

Every method here is a :class:`Correction`; ``CorrectedDenoiser(denoiser, correction)`` is the
``Denoiser -> Denoiser`` transform, and a pipeline hook can call ``correction(x, sigma, x0)`` directly.
The base class owns what all of them share: flattening, the noise-level window, per-sample gating
(rows outside the window or below the threshold are returned bit-identical) and diagnostics.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ..kernels import batch_sigma, compute_dtype
from ..models.adapters import Denoiser
from ..negation import NegationSet
from .window import Window

DiagnosticsCallback = Callable[[dict[str, Tensor]], None]


@dataclass
class Proposal:
    """What a method proposes for a batch: ``x0`` (B, D) corrected, ``gate`` (B,) bool where it wants to
    act, and per-sample diagnostics (B,) such as ``weight``, ``log_beta``, ``log_kernel_mass``."""

    x0: Tensor
    gate: Tensor
    diagnostics: dict[str, Tensor]


class Correction:
    """Base of every method acting on the predicted x0 with a negation set.

    ``window`` limits the noise levels where it acts; ``callback`` receives, at every call, a dict of
    per-sample tensors: ``sigma``, ``active`` and the method's diagnostics. A subclass names its knobs in
    ``KNOBS`` (attributes of the same name), so :attr:`config` reads them back.
    """

    KNOBS: tuple[str, ...] = ()

    def __init__(self, negation: NegationSet, *, window: Window | None = None, callback: DiagnosticsCallback | None = None,
                 chunk_size: int | None = None):
        if not isinstance(negation, NegationSet):
            raise TypeError(f"negation must be a NegationSet, got {type(negation).__name__}")
        self.negation = negation
        self.window = window or Window()
        self.callback = callback
        self.chunk_size = chunk_size

    def replace(self, **changes: Any) -> Correction:
        """A shallow copy with the attributes ``changes`` (``negation``, ``callback``, ``window`` ...) replaced; ``self``
        is unchanged. Objects the copy shares with ``self`` stay shared (a conditional mode's per-run state)."""
        unknown = [name for name in changes if not hasattr(self, name)]
        if unknown:
            raise AttributeError(f"{type(self).__name__} has no attribute {', '.join(unknown)} to replace")
        out = copy.copy(self)
        for name, value in changes.items():
            setattr(out, name, value)
        return out

    def to(self, device: torch.device | str) -> Correction:
        """This correction with its negation set on ``device``: a moved copy, or ``self`` when it is there already."""
        if self.negation.device == torch.device(device):
            return self
        return self.replace(negation=self.negation.to(device))

    @property
    def is_identity(self) -> bool:
        """True when the correction provably changes nothing (then the wrapped x0 is returned as is)."""
        return self.window.empty

    @property
    def config(self) -> dict[str, Any]:
        """The method's name, its knobs (plain values; objects such as a calibration by their repr) and its window."""
        def plain(value: Any) -> Any:
            return value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)

        return {"method": type(self).__name__, **{k: plain(getattr(self, k)) for k in self.KNOBS},
                "window": [self.window.sigma_min, self.window.sigma_max]}

    def propose(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Proposal:
        """Flattened (B, D) inputs in the compute dtype; ``sigma`` (B,)."""
        raise NotImplementedError

    def __call__(self, x: Tensor, sigma: Tensor | float, x0: Tensor) -> Tensor:
        self.negation.check_compatible(x0, "denoised samples")
        if x.shape != x0.shape:
            raise ValueError(f"x {tuple(x.shape)} and x0 {tuple(x0.shape)} must have the same shape")
        batch = x0.shape[0]
        dtype = compute_dtype(x0.dtype, self.negation.dtype)
        sigma_b = batch_sigma(sigma, batch, dtype, x0.device)
        in_window = self.window.contains(sigma_b)
        if self.is_identity or (sigma_b.device.type == "cpu" and not bool(in_window.any())):
            self._report(sigma_b, in_window & False, {})
            return x0
        x0_flat = x0.reshape(batch, -1)
        proposal = self.propose(x.reshape(batch, -1).to(dtype), sigma_b, x0_flat.to(dtype))
        active = in_window & proposal.gate
        limit = torch.finfo(x0.dtype).max  # the proposal is computed in float32/64: clip to the output's finite range
        out = torch.where(active[:, None], proposal.x0.clamp(-limit, limit).to(x0.dtype), x0_flat)
        self._report(sigma_b, active, proposal.diagnostics)
        return out.reshape(x0.shape)

    def _report(self, sigma: Tensor, active: Tensor, diagnostics: dict[str, Tensor]) -> None:
        if self.callback is not None:
            self.callback({"sigma": sigma, "active": active, **diagnostics})


class CorrectedDenoiser:
    """``D'(x, sigma, **cond) = correction(x, sigma, D(x, sigma, **cond))``: a method applied to a denoiser."""

    def __init__(self, denoiser: Denoiser, correction: Correction):
        self.denoiser = denoiser
        self.correction = correction

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        return self.correction(x, sigma, self.denoiser(x, sigma, **cond))
