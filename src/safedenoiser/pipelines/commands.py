"""CLI: ``safe-denoiser negation build``, ``safe-denoiser generate`` and ``safe-denoiser evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..argtypes import device, finite_float, float_in, nonnegative_float, nonnegative_int, positive_float, positive_int, threshold_float

DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def register(subparsers: argparse._SubParsersAction) -> None:
    negation = subparsers.add_parser("negation", help="negation sets for diffusers pipelines")
    sub = negation.add_subparsers(dest="negation_command", required=True)
    build = sub.add_parser("build", help="encode a folder of images with a pipeline's VAE into a negation set")
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
    build.set_defaults(run=run_build)

    gen = subparsers.add_parser("generate", help="text-to-image with the safe denoiser on any diffusers pipeline")
    gen.add_argument("--model", required=True,
                     help="diffusers model folder or hub id; 'fashion-t2i' is the shipped text-to-image pipeline")
    gen.add_argument("--prompts", required=True, help="CSV (prompt, seed, guidance, categories, ...) or text file")
    gen.add_argument("--out", required=True, help="output folder (images/, records/, records.jsonl)")
    gen.add_argument("--negation", default=None, help="negation set file; without it the plain pipeline runs")
    gen.add_argument("--mode", choices=("paper", "reference", "conditional"), default="paper",
                     help="correction: 'conditional' (needs --reference) works with prompts and CFG; 'paper' and "
                          "'reference' (the authors' code) as published; the calibrated / substitution modes need "
                          "a sample bank: use the library")
    gen.add_argument("--reference", default=None,
                     help="conditional mode: a set of ALLOWED images encoded like the negation set "
                          "(build it with `safe-denoiser negation build` on a folder of allowed images)")
    gen.add_argument("--gain", type=positive_float, default=None,
                     help="conditional mode: prior odds of negated content (default: the mode's default)")
    gen.add_argument("--eta", type=nonnegative_float, default=1.0, help="paper mode: w = eta * beta")
    gen.add_argument("--max-weight", type=positive_float, default=1e6, help="paper mode: weight clip")
    gen.add_argument("--scale", type=finite_float, default=0.1, help="reference mode: x0 <- x0 - scale * E_unsafe")
    gen.add_argument("--bandwidth", type=positive_float, default=1.0, help="reference mode: kernel bandwidth s")
    gen.add_argument("--log-threshold", type=threshold_float, default=float("-inf"), help="act where log beta > this")
    gen.add_argument("--window-t", type=nonnegative_int, default=None,
                     help="act only at training timesteps t >= this (VP models; the paper uses 780 of 1000)")
    gen.add_argument("--steps", type=positive_int, default=50)
    gen.add_argument("--guidance", type=finite_float, default=7.5, help="CFG scale when the prompt file has none")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--height", type=positive_int, default=None)
    gen.add_argument("--width", type=positive_int, default=None)
    gen.add_argument("--scheduler", default=None, help="diffusers scheduler class to swap in, e.g. DDIMScheduler")
    gen.add_argument("--seed", type=int, default=0, help="seed of item i when the prompt file has none: seed + i")
    gen.add_argument("--batch-size", type=positive_int, default=1)
    gen.add_argument("--device", type=device, default="cpu")
    gen.add_argument("--dtype", choices=DTYPES, default="float32")
    gen.add_argument("--no-check", action="store_true", help="skip the negation set / VAE match check")
    gen.set_defaults(run=run_generate)

    ev = subparsers.add_parser("evaluate", help="NudeNet ASR and CLIP score of a generate output folder")
    ev.add_argument("--run", required=True, dest="run_dir", help="output folder of safe-denoiser generate")
    ev.add_argument("--no-nudenet", action="store_true")
    ev.add_argument("--clip", default=None, help="local CLIP checkpoint folder for the CLIP score")
    ev.add_argument("--threshold", type=float_in(0.0, 1.0), default=0.6, help="NudeNet detection score threshold")
    ev.set_defaults(run=run_evaluate)


def run_build(args: argparse.Namespace) -> int:
    from .negation_build import build_from_folder

    images = args.images[0] if len(args.images) == 1 and Path(args.images[0]).is_dir() else args.images
    report = build_from_folder(args.model, images, args.out, resolution=args.resolution, batch_size=args.batch_size,
                               strict=args.strict, resume=not args.no_resume, device=args.device,
                               dtype=_dtype(args.dtype), store_dtype=_dtype(args.store_dtype))
    print(f"wrote {report.count} latents to {report.path}"
          + (f" (reused {report.resumed_batches} batches of an interrupted build)" if report.resumed_batches else ""))
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    return 0


def load_pipeline(model: str, device: str = "cpu", dtype: str = "float32", scheduler: str | None = None) -> Any:
    """``DiffusionPipeline.from_pretrained(model)`` on ``device``; optionally with another scheduler class."""
    import diffusers

    from ..t2i.pipeline import SHIPPED_NAME, FashionTextPipeline, is_text_pipeline_folder, shipped_pipeline_path

    if model == SHIPPED_NAME:
        model = str(shipped_pipeline_path())
    loader = FashionTextPipeline if is_text_pipeline_folder(model) else diffusers.DiffusionPipeline
    try:
        pipe = loader.from_pretrained(model, torch_dtype=_dtype(dtype))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"cannot load a diffusers pipeline from {model!r}: {err}") from err
    if scheduler:
        cls = getattr(diffusers, scheduler, None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise ValueError(f"--scheduler {scheduler!r} is not a diffusers scheduler class (e.g. DDIMScheduler)")
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None  # the run is evaluated afterwards; blacked-out images would hide the ASR
    return pipe.to(device)


def run_generate(args: argparse.Namespace) -> int:
    from ..methods import Window
    from .generate import generate, read_prompts
    from .hook import attach_safe_denoiser
    from .noise_levels import ve_sigma_at_timestep

    items = read_prompts(args.prompts, seed=args.seed)
    pipe = load_pipeline(args.model, args.device, args.dtype, args.scheduler)
    hook, method, params = None, "plain", {}
    if args.negation:
        if args.mode == "paper":
            params = {"eta": args.eta, "max_weight": args.max_weight, "log_threshold": args.log_threshold}
        elif args.mode == "conditional":
            params = {"reference": _reference_set(args.reference, pipe, check=not args.no_check),
                      "log_threshold": args.log_threshold, **({"gain": args.gain} if args.gain is not None else {})}
        else:
            params = {"scale": args.scale, "bandwidth": args.bandwidth, "log_threshold": args.log_threshold}
        if args.window_t is not None:
            _check_window_t(pipe.scheduler, args.window_t)
            params["window"] = Window(ve_sigma_at_timestep(pipe.scheduler, args.window_t))
        hook = attach_safe_denoiser(pipe, args.negation, args.mode, check=not args.no_check, **params)
        method = f"safe-denoiser/{args.mode}"
        # what the correction was built with, read back from it (every knob, defaults included), files by path
        params = {**hook.correction.config, "negation": str(args.negation), "window_t": args.window_t}
        if "reference" in params:
            params["reference"] = str(args.reference)
    call = {k: v for k, v in (("height", args.height), ("width", args.width),
                              ("negative_prompt", args.negative_prompt)) if v is not None}
    counts = generate(pipe, items, args.out, hook=hook, method=method, parameters=params, steps=args.steps,
                      guidance=args.guidance, batch_size=args.batch_size, generator_device="cpu",
                      settings=_generate_settings(args), **call)
    print(json.dumps(counts))
    return 0


def _reference_set(path: str | None, pipe: Any, check: bool = True) -> Any:
    """The conditional mode's reference set, checked against the pipeline like a negation set."""
    from ..methods import ReferenceSet
    from ..negation import NegationSet, NegationSetError
    from .hook import negation_differences

    if not path:
        raise ValueError("--mode conditional needs --reference: a set of allowed images encoded like the negation "
                         "set (safe-denoiser negation build --images <allowed images>)")
    loaded = NegationSet.load(path)
    if check:
        diffs = negation_differences(pipe, loaded)
        if diffs:
            raise NegationSetError("reference set does not match the pipeline: " + "; ".join(diffs))
    return ReferenceSet(loaded.data, space=loaded.space, source=loaded.source, metadata=loaded.metadata)


def _check_window_t(scheduler: Any, timestep: int) -> None:
    alphas = getattr(scheduler, "alphas_cumprod", None)
    count = 0 if alphas is None else len(alphas)
    if not count:
        raise ValueError(f"--window-t needs a scheduler with training timesteps (alphas_cumprod); {type(scheduler).__name__} has none")
    if not 0 <= timestep < count:
        raise ValueError(f"--window-t {timestep} is outside the scheduler's training timesteps 0..{count - 1}")


def _generate_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What else decides the images of a generate run (stored in OUT/settings.json by generate)."""
    settings = {"model": str(args.model), "dtype": args.dtype, "scheduler": args.scheduler, "mode": args.mode}
    if args.negation:
        from ..fileio import read_safetensors

        for key, path in (("negation_hash", args.negation), ("reference_hash", args.reference)):
            if path:  # already loaded and verified
                settings[key] = read_safetensors(path, what="negation set", keys=())[1].get("content_hash")
    return settings


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_run

    try:
        result = evaluate_run(args.run_dir, nudenet=not args.no_nudenet, clip_path=args.clip, threshold=args.threshold)
    except ImportError as err:
        print(f"safe-denoiser evaluate: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
