"""Benchmarks run by the ``safe-denoiser`` command; ``safe-denoiser bench <name>`` commands share one group."""

from __future__ import annotations

import argparse


def bench_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``bench`` command's sub-command group, created on first use, so that several modules can each add
    ``safe-denoiser bench <name>``."""
    parser = subparsers.choices.get("bench")
    if parser is None:
        parser = subparsers.add_parser("bench", help="benchmarks (safe-denoiser bench <name> --help)")
        parser.set_defaults(bench_group=parser.add_subparsers(dest="bench_command", metavar="<name>", required=True))
    return parser.get_default("bench_group")
