"""The ``safe-denoiser`` command: a thin layer that parses arguments and calls library functions.

Each command lives next to the code it drives and registers itself through a ``register(subparsers)``
function listed in COMMAND_MODULES.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

COMMAND_MODULES = [
    "safedenoiser.bench.toy",
    "safedenoiser.bench.kernel",
    "safedenoiser.pipelines.commands",
    "safedenoiser.images.train",
    "safedenoiser.images.benchmarks",
    "safedenoiser.images.demo",
    "safedenoiser.t2i.commands",
]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``safe-denoiser generate: error: argument --steps: expected ...``
    (sub-command parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="safe-denoiser", description=(
        "Training-free safe denoisers (arXiv 2502.08011): keep diffusion samples away from a negation set."))
    parser.add_argument("--debug", action="store_true", default=bool(os.environ.get("SAFEDENOISER_DEBUG")),
                        help="show the full traceback of an error (also: SAFEDENOISER_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def describe(err: BaseException) -> str:
    """One line for an error: its message, with the exception type where the message alone is unclear."""
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or type(err).__name__}: {err.filename}"
    if isinstance(err, (ValueError, FileNotFoundError)) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(part for part in (args.command, getattr(args, "negation_command", None)) if part)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"safe-denoiser {command}: interrupted (a rerun of the same command resumes)", file=sys.stderr)
        return 130
    except Exception as err:  # the edge of the program: every error becomes one line, --debug shows the traceback
        if args.debug:
            raise
        print(f"safe-denoiser {command}: error: {describe(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
