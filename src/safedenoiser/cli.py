"""The ``safe-denoiser`` command: a thin layer that parses arguments and calls library functions.

Each command lives next to the code it drives and registers itself through a ``register(subparsers)``
function listed in COMMAND_MODULES; a module that registers without heavy imports (torch inside the functions that
run the command) keeps ``safe-denoiser --help`` fast, one that cannot is listed in DEFERRED as well.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, NoReturn

from .argtypes import apply_threads

COMMAND_MODULES = [
    "safedenoiser.bench.toy",
    "safedenoiser.bench.kernel",
    "safedenoiser.pipelines.commands",
    "safedenoiser.pipelines.generate_command",
    "safedenoiser.zoo.images.commands",
    "safedenoiser.bench.images",
    "safedenoiser.zoo.t2i.commands",
    "safedenoiser.zoo.latent.commands",
    "safedenoiser.web.commands",
]

#: Command modules that import torch when imported, with the top-level commands they add (and a one-line help for
#: ``safe-denoiser --help``; ``bench`` has its own): imported only when one of those commands is used, so that
#: ``--help``, ``--version`` and the other commands start without torch. Every other module registers without heavy
#: imports.
DEFERRED = {
    "safedenoiser.bench.toy": (("toy", "bench"), "alias of `safe-denoiser bench toy` (Gaussian-mixture benchmark)"),
    "safedenoiser.bench.kernel": (("bench",), None),
    "safedenoiser.bench.images": (("bench",), None),
}


def _shows_default(action: argparse.Action) -> bool:
    """An option whose default is worth showing: not None / False / suppressed (0 and 0.0 are shown)."""
    return bool(action.option_strings) and not any(action.default is v for v in (None, False, argparse.SUPPRESS))


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default in ``--help``, unless it is None / False or the help text already names one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not _shows_default(action) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            action.help = "default: %(default)s"  # an option without help text still shows its default
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``safe-denoiser generate: error: argument --steps: expected ...``
    and defaults in ``--help`` (sub-command parsers inherit the class)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def command_of(argv: list[str]) -> str | None:
    """The command an argument list runs: its first word that is not an option (top-level options take no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``safe-denoiser`` parser; given the argument list it will parse, only the command it runs imports its
    module (see :data:`DEFERRED`), else every command is registered."""
    from . import __version__
    from .bench import bench_subparsers

    parser = Parser(prog="safe-denoiser", description=(
        "Training-free safe denoisers (arXiv 2502.08011): keep diffusion samples away from a negation set."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", default=bool(os.environ.get("SAFEDENOISER_DEBUG")),
                        help="show the full traceback of an error (also: SAFEDENOISER_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    command = None if argv is None else command_of(argv)
    for name in COMMAND_MODULES:
        commands, help_line = DEFERRED.get(name, ((), None))
        if not commands or argv is None or command in commands:
            importlib.import_module(name).register(subparsers)
            continue
        for deferred in commands:  # listed in --help; never parsed (not this command)
            if deferred == "bench":
                bench_subparsers(subparsers)
            elif deferred not in subparsers.choices:
                subparsers.add_parser(deferred, help=help_line)
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
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv  # what was typed, for the records of the run (model cards, training.json)
    command = " ".join(part for part in (args.command, getattr(args, "negation_command", None)) if part)
    try:
        apply_threads(args)  # every command with --threads (argtypes.add_threads_option): one rule for the default
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
