"""CLI: ``safe-denoiser train`` / ``train-judge`` / ``demo``. Registering imports no torch; each command imports what
it runs when it runs."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ...argtypes import add_config_flags, add_threads_option, given_config_values, positive_int
from ..t2i.train_flags import TEXT_ONLY_FLAGS, add_text_train_flags
from .config import TRAIN_FLAGS, TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a small image diffusion model (EDM-preconditioned UNet2DModel)",
                              description="Train a small EDM-preconditioned UNet2DModel on Fashion-MNIST, the MNIST "
                                          "subset or a folder of images.")
    p.add_argument("--out", required=True, help="run folder (resumes when it holds a state.pt)")
    p.add_argument("--conditional", action="store_true", help="class-conditional with a null class for CFG")
    p.add_argument("--text", action="store_true",
                   help="text-to-image: a UNet2DConditionModel on MiniLM token embeddings (Fashion-MNIST captions); "
                        "exports a FashionTextPipeline folder <out>/pipeline; defaults from zoo.t2i.train.TextTrainConfig")
    add_config_flags(p, TrainConfig(), TRAIN_FLAGS)
    add_text_train_flags(p)
    p.add_argument("--card", action="store_true", help="write MODEL_CARD.md and a sample grid at the end")
    p.set_defaults(run=run_train)

    j = subparsers.add_parser("train-judge", help="train the Fashion-MNIST classifier judge and build the evaluation assets")
    j.add_argument("--out", default=None,
                   help="judge file to write; the evaluation assets go beside it (fashion_eval.safetensors)")
    j.add_argument("--overwrite-shipped", action="store_true",
                   help="write the package's shipped judge and evaluation assets (instead of --out)")
    j.add_argument("--epochs", type=positive_int, default=3)
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--memorise-checkpoint", default=None,
                   help="also ship the memorised training images of this subset checkpoint in the evaluation assets")
    j.add_argument("--assets-only", action="store_true", help="keep the existing judge; only rebuild the evaluation assets")
    j.add_argument("--threads", type=positive_int, default=1)
    j.set_defaults(run=run_train_judge)

    d = subparsers.add_parser("demo", help="plain vs safe sampling on the shipped models (a few minutes)",
                              description="The main demo: the shipped Fashion-MNIST models and negation examples, "
                                          "plain vs safe, in a few minutes.")
    d.add_argument("--out", default="runs/demo",
                   help="output folder (the committed results were written with --out results/demo)")
    d.add_argument("--quick", action="store_true", help="tiny smoke-test size")
    add_threads_option(d)
    d.set_defaults(run=run_demo)


def command_line(args: argparse.Namespace) -> str:
    """The command as it was typed (``main`` stores its argv), for model cards and training records."""
    return "safe-denoiser " + shlex.join(getattr(args, "argv", None) or [args.command])


def run_train(args: argparse.Namespace) -> int:
    if args.text:
        from ..t2i.train import run_text_training

        return run_text_training(args, command_line(args))
    from .train import train

    text_only = [f"--{k}" for k in TEXT_ONLY_FLAGS if getattr(args, k, None) is not None]
    if text_only:
        raise ValueError(f"train: {', '.join(text_only)} apply to --text only")
    cfg = TrainConfig(out=args.out, conditional=args.conditional, command=command_line(args),
                      **given_config_values(args, TRAIN_FLAGS))
    path = train(cfg)
    if args.card:
        from .card import write_model_card

        write_model_card(path)
    print(f"checkpoint: {path}")
    return 0


def run_train_judge(args: argparse.Namespace) -> int:
    import torch

    from . import assets
    from .evaluator import Evaluator, train_fashion_judge

    torch.set_num_threads(args.threads)
    if args.overwrite_shipped == bool(args.out):
        raise ValueError("give --out FILE (a new judge; the evaluation assets go beside it) or --overwrite-shipped "
                         f"(rewrites the package's {assets.JUDGE_ASSET.name} and {assets.EVAL_ASSET.name}), not both or neither")
    out = assets.JUDGE_ASSET if args.overwrite_shipped else Path(args.out)
    eval_out = assets.EVAL_ASSET if args.overwrite_shipped else out.with_name(assets.EVAL_ASSET.name)
    if not args.overwrite_shipped and {out.resolve(), eval_out.resolve()} & {p.resolve() for p in assets.shipped_files()}:
        raise ValueError(f"--out {args.out} would overwrite a shipped asset in {assets.ASSETS}; "
                         "choose another folder, or pass --overwrite-shipped instead of --out")
    subset = None
    if args.memorise_checkpoint:
        subset = assets.memorise_subset(args.memorise_checkpoint)
    if args.assets_only:
        evaluator = Evaluator.load(assets.JUDGE_ASSET if args.overwrite_shipped or not out.is_file() else out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        evaluator = train_fashion_judge(out, epochs=args.epochs, seed=args.seed)
    assets.build_eval_assets(evaluator, eval_out, subset_index=subset)
    print(f"judge: {out if not args.assets_only else '(kept)'} (test accuracy {evaluator.test_accuracy:.4f}, "
          f"copy threshold {evaluator.copy_threshold:.3f}); evaluation assets: {eval_out}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from ...bench.demo import run_demo as demo

    torch.set_num_threads(args.threads)
    result = demo(Path(args.out), quick=args.quick)
    print(result["table"])
    print(f"outputs in {args.out} ({result['seconds']:.0f} s)")
    return 0
