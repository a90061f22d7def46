"""The ``safe-denoiser`` command: a thin layer that parses arguments and calls library functions.

Each command lives next to the code it drives and registers itself through a ``register(subparsers)``
function listed in COMMAND_MODULES.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "safedenoiser.bench.toy",
    "safedenoiser.bench.kernel",
    "safedenoiser.pipelines.commands",
    "safedenoiser.images.train",
    "safedenoiser.images.benchmarks",
    "safedenoiser.images.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safe-denoiser", description=(
        "Training-free safe denoisers (arXiv 2502.08011): keep diffusion samples away from a negation set."))
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"safe-denoiser {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
