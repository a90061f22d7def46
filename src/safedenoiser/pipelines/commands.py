"""CLI: ``safe-denoiser negation build`` and ``safe-denoiser evaluate`` (``generate``: :mod:`.generate_command`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..argtypes import add_threads_option, device, float_in, positive_int

DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def register(subparsers: argparse._SubParsersAction) -> None:
    negation = subparsers.add_parser("negation", help="negation sets for diffusers pipelines")
    sub = negation.add_subparsers(dest="negation_command", required=True)
    build = sub.add_parser("build", help="encode a folder of images with a pipeline's VAE into a negation set",
                           description="Encode images into a negation set (or, with --role reference, a reference "
                                       "set of allowed images). Resumable; under torchrun / accelerate launch "
                                       "(RANK, WORLD_SIZE) batch k goes to rank k mod WORLD_SIZE and the last rank "
                                       "to finish writes one file, identical to a one-process build.")
    build.add_argument("--model", required=True,
                       help="diffusers model folder or hub id (its vae/ is used; a pipeline without a VAE, such as "
                            "'fashion-t2i', gets a pixel-space set at its UNet's size and channels)")
    build.add_argument("--images", required=True, nargs="+", help="an image folder, or image files")
    build.add_argument("--out", required=True, help="output .safetensors file")
    build.add_argument("--resolution", type=positive_int, default=None, help="pixel size (default: the VAE's sample_size)")
    build.add_argument("--batch-size", type=positive_int, default=8)
    build.add_argument("--strict", action="store_true", help="refuse unreadable images instead of skipping them")
    build.add_argument("--no-resume", action="store_true", help="discard the parts of an interrupted build")
    build.add_argument("--device", type=device, default="cpu")
    build.add_argument("--dtype", choices=DTYPES, default="float32", help="VAE compute dtype")
    build.add_argument("--store-dtype", choices=DTYPES, default="float32", help="dtype of the stored latents")
    build.add_argument("--role", choices=("negation", "reference"), default="negation",
                       help="negation: what must not be generated (default); reference: allowed images, for "
                            "generate --reference")
    build.add_argument("--background", type=float_in(-1.0, 1.0), default=-1.0,
                       help="value in [-1, 1] that transparent pixels are composited on (default -1: black, the "
                            "background of Fashion-MNIST-style data; 1 is white)")
    add_threads_option(build)
    build.set_defaults(run=run_build)

    ev = subparsers.add_parser("evaluate", help="NudeNet ASR and CLIP score of a generate output folder")
    ev.add_argument("--run", required=True, dest="run_dir", help="output folder of safe-denoiser generate")
    ev.add_argument("--no-nudenet", action="store_true")
    ev.add_argument("--clip", default=None, help="local CLIP checkpoint folder for the CLIP score")
    ev.add_argument("--threshold", type=float_in(0.0, 1.0), default=0.6, help="NudeNet detection score threshold")
    ev.set_defaults(run=run_evaluate)


def run_build(args: argparse.Namespace) -> int:
    from .negation_build import build_from_folder

    report = build_from_folder(args.model, args.images, args.out, resolution=args.resolution, batch_size=args.batch_size,
                               strict=args.strict, resume=not args.no_resume, device=args.device,
                               dtype=_dtype(args.dtype), store_dtype=_dtype(args.store_dtype), role=args.role,
                               background=args.background, log=lambda line: print(f"warning: {line}", file=sys.stderr))
    print(report.summary())
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    for name, note in report.warnings.items():
        print(f"warning: {note}", file=sys.stderr)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_run

    try:
        result = evaluate_run(args.run_dir, nudenet=not args.no_nudenet, clip_path=args.clip, threshold=args.threshold)
    except ImportError as err:
        print(f"safe-denoiser evaluate: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
