"""The two types every benchmark shares: a :class:`Setting` (a method at one knob value, and how to build it) and a
:class:`Record` (that setting measured: the benchmark's metrics, the seconds it took and extras). The toy, image and
text-to-image benchmarks differ only in which metrics they fill in; :mod:`.report` selects and writes records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar


@dataclass
class Setting:
    """One method at one knob value. ``make`` builds what the benchmark runs: a denoiser (images), a correction to
    hook into a pipeline (text-to-image, None for none) or a factory of a counted denoiser (toy); ``cost``
    multiplies the network evaluations per sampler step (2 for guidance that calls two denoisers)."""

    method: str
    knob: str
    value: Any
    make: Callable[..., Any] | None = None
    cost: float = 1.0


@dataclass
class Record:
    """A measured :class:`Setting`: ``metrics`` are the benchmark's columns (read as attributes: ``record.fd``),
    ``seconds`` its wall time (named ``SECONDS`` in the results file), ``extra`` what only some rows have."""

    method: str
    knob: str
    value: Any
    metrics: dict[str, Any]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    SECONDS: ClassVar[str] = "seconds"

    def __getattr__(self, name: str) -> Any:
        metrics = self.__dict__.get("metrics")
        if metrics is not None and name in metrics:
            return metrics[name]
        raise AttributeError(f"{type(self).__name__} has no field or metric {name!r}")

    def as_dict(self) -> dict[str, Any]:
        """The row of a results file: method, knob, value, the metrics, the seconds and ``extra`` (nested)."""
        return {"method": self.method, "knob": self.knob, "value": self.value, **self.metrics,
                self.SECONDS: self.seconds, "extra": self.extra}

    def flat(self) -> dict[str, Any]:
        """The same with ``extra`` merged into the row (the toy benchmark's files)."""
        row = self.as_dict()
        extra = row.pop("extra")
        return {**row, **extra}
