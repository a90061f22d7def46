"""Argument types for the command line: each refuses a bad value at the edge with one line naming the value
(argparse adds the flag: ``argument --steps: expected an integer >= 1, got '0'``)."""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer >= ``low``."""
    def parse(text: str) -> int:
        value = _int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def float_in(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False, allow_inf: bool = False,
             what: str | None = None) -> Callable[[str], float]:
    """A number in [low, high] (``low_open``: (low, high]); NaN is always refused, +-inf only with ``allow_inf``."""
    def parse(text: str) -> float:
        value = _float(text)
        finite_ok = allow_inf or math.isfinite(value)
        in_range = value > low if low_open else value >= low
        if math.isnan(value) or not finite_ok or not in_range or value > high:
            raise argparse.ArgumentTypeError(f"expected {describe}, got {text!r}")
        return value

    bounds = []
    if low > -math.inf:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high < math.inf:
        bounds.append(f"<= {high:g}")
    describe = what or ("a " + ("" if allow_inf else "finite ") + "number" + (" " + " and ".join(bounds) if bounds else ""))
    parse.__name__ = describe
    return parse


finite_float = float_in()
positive_float = float_in(0.0, low_open=True)
nonnegative_float = float_in(0.0)
threshold_float = float_in(allow_inf=True, what="a number or -inf/inf (not NaN)")


def nonempty_text(text: str) -> str:
    """A text with something other than spaces in it (a concept's words)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected words, got an empty text")
    return text


def device(text: str) -> str:
    """A torch device string that torch can parse and that exists here."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu, cuda, cuda:0 or mps, got {text!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r} asked for, but CUDA is not available here")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"device {text!r} asked for, but MPS is not available here")
    return text


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers >= 1, e.g. ``16,32,64``."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 16,32,64, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def add_config_flags(parser: argparse.ArgumentParser, config: Any, flags: dict[str, dict[str, Any]]) -> None:
    """One ``--field-name`` per entry of ``flags`` (a field of the dataclass instance ``config`` -> ``add_argument``
    keywords such as ``type``, ``choices``, ``help``; ``flag`` renames the option): the value type and the default
    come from the config, so a knob is declared once. The parsed value is None when the flag is not given (then
    the config's default, or a preset such as ``--quick``, applies); tuple fields take one or more values."""
    for name, options in flags.items():
        options = dict(options)
        default = getattr(config, name)
        flag = options.pop("flag", "--" + name.replace("_", "-"))
        if isinstance(default, tuple):
            options.setdefault("nargs", "+")
        options.setdefault("metavar", flag.lstrip("-").replace("-", "_").upper())
        if isinstance(default, tuple):
            shown = (" " if options["nargs"] else ",").join(map(str, default))
        else:
            shown = default
        options["help"] = f"{options.get('help', name.replace('_', ' '))} (default: {shown})"
        parser.add_argument(flag, dest=name, default=None, **options)


def given_config_values(args: argparse.Namespace, flags: dict[str, Any]) -> dict[str, Any]:
    """The config fields the user gave on the command line (lists as tuples): what overrides defaults and presets."""
    values = {name: getattr(args, name) for name in flags}
    return {name: tuple(v) if isinstance(v, list) else v for name, v in values.items() if v is not None}


def idle_cores() -> int:
    """Cores this process may use that are not already busy: usable cores (``sched_getaffinity``) minus the
    1-minute load average, rounded down, at least 1. On a busy machine extra torch threads only spin and wait for
    each other (on 2 shared, busy cores ``generate`` took 22x longer with 2 threads than with 1, docs/generate.md)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(cores - load)))


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (torch intra-op threads) for a command that computes; ``safedenoiser.cli.main`` applies it
    (:func:`apply_threads`) before the command runs. Default: ``SAFEDENOISER_THREADS``, else :func:`idle_cores`."""
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: $SAFEDENOISER_THREADS, else the cores not busy now: "
                             "usable cores minus the load average, at least 1)")


def resolve_threads(value: int | None) -> int:
    """``value``, else ``$SAFEDENOISER_THREADS``, else :func:`idle_cores`."""
    import os

    if value is not None:
        return value
    env = os.environ.get("SAFEDENOISER_THREADS")
    if env:
        try:
            return positive_int(env)
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"SAFEDENOISER_THREADS: {err}") from None
    return idle_cores()


def apply_threads(args: argparse.Namespace) -> int | None:
    """Set torch's thread count from ``args.threads`` (added by :func:`add_threads_option`); the number set, or None
    when the command has no ``--threads``."""
    if not hasattr(args, "threads"):
        return None
    import torch

    threads = resolve_threads(args.threads)
    args.threads = threads
    torch.set_num_threads(threads)
    return threads
