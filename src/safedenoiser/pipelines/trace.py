"""What the safe-denoiser hook saw: per corrected model call, the noise level and the correction's per-row diagnostics.

:class:`TraceRecorder` is the diagnostics callback the hook gives its copy of the correction; it forwards every call to
the callback the user gave the correction, so the user's callback still sees everything and is never replaced.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from torch import Tensor

from ..kernels import nearest_neighbours
from ..negation import NegationSet


class TraceRecorder:
    """``trace``: per corrected model call, ``sigma`` (VE, float; set by the hook before the call), ``active`` and
    ``weight`` (per row, kept on the device until :meth:`summary`); ``last_x0``: the x0 of the last model call."""

    def __init__(self, forward: Callable[[dict[str, Tensor]], None] | None = None):
        self.forward = forward
        self.trace: list[dict[str, Any]] = []
        self.sigma: float = math.nan
        self.last_x0: Tensor | None = None

    def __call__(self, diagnostics: dict[str, Tensor]) -> None:
        self.trace.append({"sigma": self.sigma, "active": diagnostics["active"], "weight": diagnostics.get("weight")})
        if self.forward is not None:
            self.forward(diagnostics)

    def reset(self) -> None:
        self.trace = []
        self.last_x0 = None

    def summary(self, batch_size: int, negation: NegationSet) -> list[dict[str, Any]]:
        """Per image of the calls since :meth:`reset`: ``steps_active`` (model calls where any of its branches was
        corrected), ``mean_weight`` / ``max_weight`` over its corrected rows, ``model_calls``, and the negation item
        nearest to its last x0. Rows are mapped to images as diffusers batches branches: row r belongs to image
        r mod ``batch_size``."""
        stats = [{"model_calls": 0, "steps_active": 0, "weights": []} for _ in range(batch_size)]
        for entry in self.trace:
            active = entry["active"].detach().cpu().reshape(-1, batch_size)
            weight = entry.get("weight")
            weight = weight.detach().float().cpu().reshape(-1, batch_size) if weight is not None else None
            for i in range(batch_size):
                stats[i]["model_calls"] += 1
                if bool(active[:, i].any()):
                    stats[i]["steps_active"] += 1
                    if weight is not None:
                        stats[i]["weights"] += weight[:, i][active[:, i]].tolist()
        nearest = self.nearest_negation(batch_size, negation)
        out = []
        for i, item in enumerate(stats):
            w = item.pop("weights")
            out.append({**item, "mean_weight": sum(w) / len(w) if w else 0.0, "max_weight": max(w) if w else 0.0,
                        **nearest[i]})
        return out

    def nearest_negation(self, batch_size: int, negation: NegationSet) -> list[dict[str, Any]]:
        """Per image: the negation item nearest to the x0 of the last model call (its conditional branch, the
        last ``batch_size`` rows), with its distance and, when the set records them, its image name."""
        last = self.last_x0
        if last is None or last.shape[0] < batch_size or tuple(last.shape[1:]) != negation.item_shape:
            return [{} for _ in range(batch_size)]
        rows = last[-batch_size:].reshape(batch_size, -1).to(negation.device, negation.dtype)
        dist, index = nearest_neighbours(rows, negation.flat, 1)
        names = [entry.get("name") for entry in negation.metadata.get("images", [])]
        out = []
        for d, i in zip(dist[:, 0].tolist(), index[:, 0].tolist()):
            record = {"nearest_negation_index": int(i), "nearest_negation_distance": round(float(d), 4)}
            if i < len(names) and names[i]:
                record["nearest_negation_image"] = names[i]
            out.append(record)
        return out
