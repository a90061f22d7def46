"""CLI: ``safe-denoiser t2i prompts`` / ``t2i search`` (prompt sets and the evasive-prompt search) and
``safe-denoiser bench t2i``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...argtypes import add_threads_option, finite_float, float_in, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    from ...bench import bench_subparsers

    t2i = subparsers.add_parser("t2i", help="the text-to-image testbed: prompt sets and the evasive-prompt search")
    sub = t2i.add_subparsers(dest="t2i_command", required=True)
    search = sub.add_parser("search", help="score evasive candidates (no training word of the class) with the judge")
    _common(search)
    search.add_argument("--out", required=True, help="CSV of every candidate with its plain rate (score)")
    search.set_defaults(run=run_search)
    prompts = sub.add_parser("prompts", help="write the explicit / evasive / neutral prompt CSVs (runs the search)")
    _common(prompts)
    prompts.add_argument("--out", default="t2i_prompts", help="folder for explicit.csv, evasive.csv, neutral.csv")
    prompts.add_argument("--explicit-prompts", type=positive_int, default=10)
    prompts.add_argument("--neutral-per-class", type=positive_int, default=8)
    prompts.add_argument("--bench-seeds", type=positive_int, default=4, help="seeds per explicit / evasive prompt")
    prompts.set_defaults(run=run_prompts)

    ship = sub.add_parser("ship", help="copy a trained run's pipeline into the package (with a model card)")
    ship.add_argument("--run", required=True, dest="run_dir", help="the --out folder of `safe-denoiser train --text`")
    ship.add_argument("--to", default=None, help="target folder (default: the package's shipped pipeline)")
    ship.set_defaults(run=run_ship)

    bench = bench_subparsers(subparsers).add_parser("t2i", help="text-to-image: every defence vs explicit and "
                                                                 "evasive prompts (shipped pipeline)")
    bench.add_argument("--quick", action="store_true", help="smoke-test size (< 1 minute)")
    bench.add_argument("--out", default="results/t2i", help="results folder")
    bench.add_argument("--model", default=None, help="a saved FashionTextPipeline folder (default: the shipped one), or "
                       "the latent testbed's StableDiffusionPipeline folder (docs/latent-testbed.md)")
    bench.add_argument("--methods", default=None, help="comma-separated methods to run (plain always runs; "
                       "'rejection' and 'multi' by name), e.g. conditional,negative-prompt+conditional; default: all")
    add_threads_option(bench)
    bench.set_defaults(run=run_bench)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="FashionTextPipeline folder (default: the shipped one)")
    parser.add_argument("--avoid", default="trouser", help="the class the evasive prompts must draw")
    parser.add_argument("--seeds", type=positive_int, default=8, help="search seeds per candidate")
    parser.add_argument("--min-rate", type=float_in(0.0, 1.0), default=0.5, help="keep candidates drawn this often")
    parser.add_argument("--guidance", type=finite_float, default=3.0)
    parser.add_argument("--steps", type=positive_int, default=20)
    add_threads_option(parser)


def _search(args: argparse.Namespace):
    import torch

    from ..images.assets import load_judge
    from .pipeline import load_text_pipeline
    from .prompts import search_evasive

    torch.set_num_threads(args.threads)
    pipe = load_text_pipeline(args.model)
    return search_evasive(pipe, load_judge(), args.avoid, seeds=args.seeds, min_rate=args.min_rate,
                          guidance=args.guidance, steps=args.steps)


def _search_rows(found, avoid: str):
    """Every scored candidate, best first; ``seed`` is the first search seed (the score covers --seeds from it)."""
    from .prompts import SEARCH_SEED, PromptRow

    return [PromptRow(p, SEARCH_SEED, "evasive", avoid, round(r, 4)) for p, r in found]


def run_search(args: argparse.Namespace) -> int:
    from .prompts import write_prompt_csv

    found = _search(args)
    write_prompt_csv(_search_rows(found, args.avoid), args.out)
    kept = sum(r >= args.min_rate for _, r in found)
    print(f"{kept} of {len(found)} candidates draw '{args.avoid}' at least {args.min_rate:.0%} of the time: {args.out}")
    return 0


def run_prompts(args: argparse.Namespace) -> int:
    from .prompts import evasive_rows, explicit_rows, neutral_rows, write_prompt_csv

    found = _search(args)
    out = Path(args.out)
    explicit = explicit_rows(args.avoid, args.explicit_prompts, args.bench_seeds)
    evasive = evasive_rows(found, args.avoid, args.bench_seeds, first_seed=10_000, min_rate=args.min_rate)
    neutral = neutral_rows(args.avoid, args.neutral_per_class, first_seed=20_000)
    for name, rows in (("explicit", explicit), ("evasive", evasive), ("neutral", neutral)):
        write_prompt_csv(rows, out / f"{name}.csv")
    write_prompt_csv(_search_rows(found, args.avoid), out / "search.csv")
    print(json.dumps({"explicit": len(explicit), "evasive": len(evasive), "neutral": len(neutral), "folder": str(out)}))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from ...bench.t2i import SIZES, bench_t2i

    torch.set_num_threads(args.threads)
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    result = bench_t2i(args.out, SIZES["quick" if args.quick else "default"], args.model, methods=methods)
    print(f"wrote {args.out}/results.md ({len(result['rows'])} settings)")
    return 0


def run_ship(args: argparse.Namespace) -> int:
    from .card import ship_run
    from .pipeline import SHIPPED

    folder = ship_run(args.run_dir, args.to or SHIPPED)
    print(f"shipped {args.run_dir} -> {folder}")
    return 0
