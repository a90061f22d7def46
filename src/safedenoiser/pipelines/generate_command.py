"""CLI: ``safe-denoiser generate``, ``safe-denoiser profile build`` and ``safe-denoiser examples``.

``generate --negation FILE`` runs the conditional mode (the one that acts on prompts with classifier-free guidance);
without ``--reference`` it derives a reference set from the pipeline's own samples (:mod:`.reference`) and caches it
beside the negation set; ``--mode calibrated|substitution`` draws a bank of the pipeline's unguided samples
(:mod:`.bank`), cached there too, and calibrates on it (``--estimator kernel|ratio``). ``--safety FOLDER`` takes negation set, reference set and knobs from a safety profile
(:mod:`.profile`). Every input file is checked before the pipeline loads; a flag of another mode is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..argtypes import (add_threads_option, device, finite_float, float_in, int_at_least, nonempty_text,
                        nonnegative_float, nonnegative_int, positive_float, positive_int, threshold_float)
from .commands import DTYPES, _dtype

#: knob flags that belong to some modes (dest -> mode, or a tuple of modes; ``BANK``: every mode that calibrates on a
#: bank of the pipeline's samples, ``methods.registry.bank_modes``) and their defaults where the flag is absent
BANK = "bank"
MODE_FLAGS = {"reference": "conditional", "guard": "conditional", "gain": ("conditional", BANK),
              "concept": "conditional", "steer": "conditional", "eta": "paper",
              "max_weight": "paper", "scale": "authors", "bandwidth": "authors", "bank_size": BANK, "estimator": BANK}
KNOB_DEFAULTS = {"eta": 1.0, "max_weight": 1e6, "scale": 0.1, "bandwidth": 1.0}
SHARED_FLAGS = ("log_threshold", "window_t")
BANK_FLAGS = ("bank_size", "estimator")  # settings of the bank, not knobs of the correction


def flag_modes(dest: str) -> tuple[str, ...]:
    """The modes flag ``dest`` belongs to (:data:`MODE_FLAGS`, ``BANK`` expanded from the catalogue)."""
    from ..methods.registry import bank_modes

    owners = MODE_FLAGS[dest]
    owners = (owners,) if isinstance(owners, str) else owners
    return tuple(m for owner in owners for m in (bank_modes() if owner == BANK else (owner,)))


def estimator_choice(text: str) -> str:
    """``--estimator``: a beta* estimator of ``methods.ratio.calibrate`` (read when given, not for ``--help``)."""
    from ..methods.ratio import ESTIMATORS

    if text not in ESTIMATORS:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(ESTIMATORS)})")
    return text


def mode_choices() -> tuple[str, ...]:
    """The modes ``--mode`` offers: the catalogue's modes (``methods.registry.cli_modes``; the bank modes draw their
    bank from the pipeline, :mod:`.bank`)."""
    from ..methods.registry import cli_modes

    return cli_modes()


def mode_choice(text: str) -> str:
    """``--mode``: one of :func:`mode_choices` or an old name of one (``reference``), kept as typed so that records,
    profiles and reruns into a folder written before the rename stay the same. The catalogue is read when a mode is
    given, not for ``--help`` (which imports no torch)."""
    if _canonical(text) not in mode_choices():
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(mode_choices())})")
    return text


def _canonical(mode: str) -> str:
    """Today's name of ``mode`` (``reference`` -> ``authors``)."""
    from ..methods.registry import mode_name

    return mode_name(mode)


def _safety_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--negation", default=None, help="negation set file (safe-denoiser negation build)")
    parser.add_argument("--mode", type=mode_choice, default=None, metavar="MODE",
                        help="correction (default with --negation: conditional, which acts on prompts with "
                             "classifier-free guidance; 'paper' and 'authors' (the authors' code; old name "
                             "'reference') as published; 'calibrated' and 'substitution' calibrate on a bank of this "
                             "pipeline's own unguided samples, drawn once and cached beside the negation set)")
    parser.add_argument("--reference", default=None,
                        help="conditional mode: a set of ALLOWED images encoded like the negation set (negation build "
                             "--role reference); default: derived from this pipeline's samples of harmless prompts "
                             "and cached beside the negation set")
    parser.add_argument("--guard", type=float_in(0.0, 1.0), default=None,
                        help="conditional mode, main knob: the share of a flagged request's guidance direction dropped "
                             "(default 1: all; 0: the correction alone, which lets more explicit requests through)")
    parser.add_argument("--concept", type=nonempty_text, default=None,
                        help="conditional mode: words naming what the negation set holds (e.g. 'trousers, pants'); a "
                             "flagged request is steered away from them instead of losing its whole prompt, so a "
                             "partly unsafe request ('a shirt and trousers') keeps its allowed part more often; the "
                             "concept branch runs for flagged requests only")
    parser.add_argument("--steer", type=nonnegative_float, default=None,
                        help="conditional mode with --concept: scale s of the steered direction x0_empty + s (x0_prompt "
                             "- x0_concept) (default 1; larger keeps the allowed part more often and breaks more images)")
    parser.add_argument("--gain", type=positive_float, default=None,
                        help="conditional mode: prior odds that a request asks for negated content (default 1; "
                             "0.1, 1 and 10 gave the same images in bench images cond); calibrated / substitution: "
                             "g in w = g beta* / r = g beta* / (1 + g beta*) (default 1)")
    parser.add_argument("--bank-size", type=int_at_least(2), default=None,
                        help="calibrated / substitution: unguided samples of this pipeline in the bank (default "
                             "64), drawn once per negation set, pipeline, steps and size and cached beside the set")
    parser.add_argument("--estimator", type=estimator_choice, default=None, metavar="{kernel,ratio}",
                        help="calibrated / substitution: beta* from kernel densities and the kNN bank split "
                             "(kernel, default) or from a fitted density-ratio classifier (ratio; fitted once, "
                             "cached beside the bank; docs/fitted-ratio.md)")
    parser.add_argument("--eta", type=nonnegative_float, default=None, help="paper mode: w = eta * beta (default 1)")
    parser.add_argument("--max-weight", type=positive_float, default=None, help="paper mode: weight clip (default 1e6)")
    parser.add_argument("--scale", type=finite_float, default=None,
                        help="authors mode: x0 <- x0 - scale * E_unsafe (default 0.1)")
    parser.add_argument("--bandwidth", type=positive_float, default=None, help="authors mode: kernel bandwidth s (default 1)")
    parser.add_argument("--log-threshold", type=threshold_float, default=None,
                        help="act only where log beta (conditional: log odds) > this (default: -inf, everywhere)")
    parser.add_argument("--window-t", type=nonnegative_int, default=None,
                        help="act only at training timesteps t >= this (VP models; the paper uses 780 of 1000)")


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser("generate", help="text-to-image with the safe denoiser on any diffusers pipeline")
    gen.add_argument("--model", required=True,
                     help="diffusers model folder or hub id; 'fashion-t2i' is the shipped text-to-image pipeline")
    gen.add_argument("--prompts", required=True, help="CSV (prompt, seed, guidance, categories, ...) or text file")
    gen.add_argument("--out", required=True, help="output folder (images/, records/, records.jsonl, grid.png)")
    gen.add_argument("--safety", default=None, help="a safety profile folder (safe-denoiser profile build): negation "
                                                    "set, reference set and knobs in one")
    _safety_options(gen)
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
    gen.add_argument("--no-check", action="store_true", help="skip the negation set / VAE / pipeline match checks")
    add_threads_option(gen)
    gen.set_defaults(run=run_generate)

    profile = subparsers.add_parser("profile", help="safety profiles: negation set, reference set and knobs in one folder")
    sub = profile.add_subparsers(dest="profile_command", required=True)
    build = sub.add_parser("build", help="write a safety profile folder for one pipeline (generate --safety FOLDER)")
    build.add_argument("--model", required=True, help="the pipeline the profile is for (folder, hub id or 'fashion-t2i')")
    build.add_argument("--out", required=True, help="profile folder to write")
    _safety_options(build)
    build.add_argument("--images", default=None,
                       help="a folder of images of what must not be generated, encoded here (instead of --negation)")
    build.add_argument("--reference-images", default=None,
                       help="a folder of ALLOWED images, encoded here (instead of --reference)")
    build.add_argument("--steps", type=positive_int, default=20, help="steps of the derived reference set's samples")
    build.add_argument("--guidance", type=finite_float, default=7.5, help="CFG scale of the derived reference set's samples")
    build.add_argument("--height", type=positive_int, default=None)
    build.add_argument("--width", type=positive_int, default=None)
    build.add_argument("--device", type=device, default="cpu")
    build.add_argument("--dtype", choices=DTYPES, default="float32")
    build.add_argument("--no-check", action="store_true", help="skip the negation set / VAE match checks")
    add_threads_option(build)
    build.set_defaults(run=run_profile_build, safety=None)

    ex = subparsers.add_parser("examples", help="write example inputs: trouser and allowed images, prompt files")
    ex.add_argument("--out", required=True, help="folder to write trousers/, allowed/, prompts/ into")
    ex.add_argument("--images", type=positive_int, default=100, help="trouser images (allowed: as many, all 9 classes)")
    ex.add_argument("--prompts", type=positive_int, default=None,
                    help="rows per prompt file (default: all of the shipped explicit / evasive / neutral sets)")
    ex.set_defaults(run=run_examples)


# -- checks before slow work -------------------------------------------------------------------------------------
def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_safety_flags(args: argparse.Namespace, files: bool = True) -> str | None:
    """The mode a run uses (None: plain, "profile": ``--safety``), with every flag that belongs to another mode
    refused and (``files``) every input file checked, before anything slow starts."""
    given = [d for d in (*MODE_FLAGS, *SHARED_FLAGS) if getattr(args, d, None) is not None]
    if getattr(args, "safety", None):
        extra = [_flag(d) for d in ("negation", "mode", *given) if getattr(args, d, None) is not None]
        if extra:
            raise ValueError(f"--safety {args.safety} already holds the negation set, reference set and knobs: drop "
                             f"{', '.join(dict.fromkeys(extra))} (or build another profile)")
        from .profile import CONFIG_NAME

        if not (Path(args.safety) / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"--safety {args.safety}: not a safety profile folder (no {CONFIG_NAME}); write one "
                                    "with safe-denoiser profile build")
        return "profile"
    if not args.negation:
        if given or args.mode:
            flags = [_flag(d) for d in ("mode", *given) if getattr(args, d, None) is not None]
            raise ValueError(f"{', '.join(flags)} needs --negation (or --safety); without one the plain pipeline runs")
        return None
    mode = args.mode or "conditional"
    wrong = [d for d in given if d in MODE_FLAGS and _canonical(mode) not in flag_modes(d)]
    if wrong:
        default = " (the default with --negation)" if args.mode is None else ""
        first, *others = flag_modes(wrong[0])
        also = f" (also of --mode {', '.join(others)})" if others else ""
        raise ValueError(f"{_flag(wrong[0])} belongs to --mode {first}, but this run uses --mode {mode}{default}{also}")
    for what, path in (("--negation", args.negation), ("--reference", args.reference)):
        if files and path and not Path(path).is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")
    return mode


def quiet_third_party() -> None:
    """No third-party warnings, logging or loading bars in a command's output (ours say what matters)."""
    import warnings

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        for module in ("diffusers", "transformers", "huggingface_hub", "accelerate", "torch"):
            warnings.filterwarnings("ignore", category=category, module=module)
    warnings.filterwarnings("ignore", message=r".*(deprecated|will be removed).*", category=FutureWarning)
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except (ImportError, AttributeError):
        pass


def _offline_reason(err: BaseException) -> str | None:
    """'no network' when the error chain holds a failed connection, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        name = type(err).__name__
        if "Connect" in name or "gaierror" in name or "Offline" in name or "LocalEntryNotFound" in name:
            return "no network"
        err = err.__cause__ or err.__context__
    return None


def load_pipeline(model: str, device: str = "cpu", dtype: str = "float32", scheduler: str | None = None) -> Any:
    """``DiffusionPipeline.from_pretrained(model)`` on ``device``; optionally with another scheduler class. A hub id
    that cannot be fetched gives one line naming it."""
    import diffusers

    from ..zoo.latent.pipeline import SHIPPED_LATENT_NAME, missing_text_components, shipped_model_folder
    from ..zoo.t2i.pipeline import SHIPPED_NAME, FashionTextPipeline, is_text_pipeline_folder

    quiet_third_party()
    if model in (SHIPPED_NAME, SHIPPED_LATENT_NAME):
        model = str(shipped_model_folder(model))
    loader = FashionTextPipeline if is_text_pipeline_folder(model) else diffusers.DiffusionPipeline
    try:
        pipe = loader.from_pretrained(model, torch_dtype=_dtype(dtype), **missing_text_components(model))
    except (OSError, ValueError) as err:
        if not Path(model).exists():
            reason = _offline_reason(err) or " ".join(str(err).split())[:200]
            raise FileNotFoundError(f"cannot load the pipeline {model!r}: no local folder of that name, it is not in the "
                                    f"Hugging Face cache, and no download is possible here ({reason}); give the folder of "
                                    "a saved diffusers pipeline, or 'fashion-t2i' / 'fashion-latent'") from err
        raise FileNotFoundError(f"cannot load a diffusers pipeline from {model!r}: {' '.join(str(err).split())}") from err
    if scheduler:
        cls = getattr(diffusers, scheduler, None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise ValueError(f"--scheduler {scheduler!r} is not a diffusers scheduler class (e.g. DDIMScheduler)")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # the commands show one bar per run
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None  # the run is evaluated afterwards; blacked-out images would hide the ASR
    return pipe.to(device)


# -- the safety profile of a run -------------------------------------------------------------------------------
def _reference_set(path: str, pipe: Any, check: bool = True) -> Any:
    """A reference set file, checked against the pipeline like a negation set."""
    from ..methods import ReferenceSet
    from ..negation import NegationSetError
    from .hook import negation_differences

    reference = ReferenceSet.load(path)
    if check:
        diffs = negation_differences(pipe, reference)
        if diffs:
            raise NegationSetError("reference set does not match the pipeline: " + "; ".join(diffs))
    return reference


def _check_window_t(scheduler: Any, timestep: int) -> None:
    alphas = getattr(scheduler, "alphas_cumprod", None)
    count = 0 if alphas is None else len(alphas)
    if not count:
        raise ValueError(f"--window-t needs a scheduler with training timesteps (alphas_cumprod); {type(scheduler).__name__} has none")
    if not 0 <= timestep < count:
        raise ValueError(f"--window-t {timestep} is outside the scheduler's training timesteps 0..{count - 1}")


def profile_from_args(args: argparse.Namespace, pipe: Any, mode: str, *, fallback_dir: str | Path | None = None,
                      log: Any = print) -> tuple[Any, dict[str, Any]]:
    """The :class:`~.profile.SafetyProfile` the flags describe, and what each image's record adds to the correction's
    knobs (``reference``: the reference set's file; bank modes: estimator, bank size, cache files). Without
    ``--reference`` the conditional mode derives one (:func:`.reference.cached_reference`); a bank mode draws or
    reuses its bank (:func:`.bank.bank_calibration`); ``log`` says which."""
    from ..negation import NegationSet, NegationSetError
    from .hook import negation_differences
    from .profile import SafetyProfile, pipeline_identity
    from .reference import cached_reference

    negation = NegationSet.load(args.negation)
    if not args.no_check:
        diffs = negation_differences(pipe, negation)
        if diffs:
            raise NegationSetError("negation set does not match the pipeline: " + "; ".join(diffs))
    knobs = {d: getattr(args, d) for d in MODE_FLAGS
             if d not in ("reference", *BANK_FLAGS) and _canonical(mode) in flag_modes(d)}
    knobs = {d: KNOB_DEFAULTS[d] if v is None and d in KNOB_DEFAULTS else v for d, v in knobs.items()}
    knobs = {d: v for d, v in knobs.items() if v is not None}
    if args.log_threshold is not None:
        knobs["log_threshold"] = args.log_threshold
    if args.window_t is not None:
        _check_window_t(pipe.scheduler, args.window_t)
    reference, reference_file, extra = None, None, {}
    if _canonical(mode) in flag_modes("bank_size"):
        from .bank import DEFAULT_BANK_SIZE, bank_calibration

        size = args.bank_size or DEFAULT_BANK_SIZE
        bank = bank_calibration(pipe, negation, args.negation, estimator=args.estimator or "kernel", size=size,
                                steps=args.steps, fallback_dir=fallback_dir, height=args.height, width=args.width)
        knobs["calibration"] = bank.calibration
        extra = bank.record()
        log(f"--mode {mode}: {'drew' if bank.drawn else 'reusing'} a bank of {size} unguided samples of this pipeline "
            f"(empty prompt, no guidance), cached in {bank.bank_file}; beta* estimator {bank.estimator}"
            + (f" (fitted classifier cached in {bank.ratio_file})" if bank.ratio_file else ""))
    elif mode == "conditional":
        if args.reference:
            reference, reference_file = _reference_set(args.reference, pipe, check=not args.no_check), args.reference
        else:
            call = {"height": args.height, "width": args.width}
            reference, path, derived = cached_reference(pipe, negation, args.negation, steps=args.steps,
                                                        guidance=args.guidance, fallback_dir=fallback_dir, **call)
            reference_file = str(path)
            dropped = reference.metadata.get("dropped_covered", "?")
            log(f"no --reference given: {'derived' if derived else 'reusing'} a reference set of {len(reference)} "
                f"samples of this pipeline for harmless prompts ({dropped} covered by the negation set dropped), "
                f"cached in {path}; real allowed images work better (negation build --role reference, then --reference)")
    profile = SafetyProfile(negation, mode, reference, knobs, args.window_t, pipeline_identity(pipe, args.model))
    return profile, {"reference": reference_file, **extra}


# -- commands ----------------------------------------------------------------------------------------------------
def run_generate(args: argparse.Namespace) -> int:
    from .generate import generate, read_prompts

    mode = check_safety_flags(args)
    items = read_prompts(args.prompts, seed=args.seed)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file")
    pipe = load_pipeline(args.model, args.device, args.dtype, args.scheduler)
    hook, method, params, sets = None, "plain", {}, {}
    if mode == "profile":
        from .profile import NEGATION_FILE, REFERENCE_FILE, SafetyProfile

        profile = SafetyProfile.load(args.safety)
        files = {"safety": str(args.safety), "negation": str(Path(args.safety) / NEGATION_FILE),
                 "reference": str(Path(args.safety) / REFERENCE_FILE) if profile.reference is not None else None}
    elif mode is not None:
        profile, extra = profile_from_args(args, pipe, mode, fallback_dir=out, log=print)
        files = {"negation": str(args.negation), **extra}
    if mode is not None:
        hook = profile.attach(pipe, check=not args.no_check)
        method = f"safe-denoiser/{profile.mode}"
        # what the correction was built with, read back from it (every knob, defaults included), files by path
        params = {**hook.correction.config, **{k: v for k, v in files.items() if v}, "window_t": profile.window_t}
        sets = {"negation_hash": profile.negation.content_hash}
        if profile.reference is not None:
            sets["reference_hash"] = profile.reference.content_hash
    call = {k: v for k, v in (("height", args.height), ("width", args.width),
                              ("negative_prompt", args.negative_prompt)) if v is not None}
    settings = {"model": str(args.model), "dtype": args.dtype, "scheduler": args.scheduler,
                "mode": "plain" if mode is None else profile.mode, **sets}
    counts = generate(pipe, items, out, hook=hook, method=method, parameters=params, steps=args.steps,
                      guidance=args.guidance, batch_size=args.batch_size, generator_device="cpu",
                      settings=settings, **call)
    print(summary_line(counts, out, None if hook is None else profile.mode))
    return 0


def summary_line(counts: dict[str, Any], out: Path, mode: str | None) -> str:
    """One line: images, how many the correction (of ``mode``; None: plain) changed, where the files are; and a
    note when a correction changed no image."""
    corrected = mode is not None
    line = (f"{counts['mine']} images in {out / 'images'} ({counts['done']} new, {counts['skipped']} already there)")
    if corrected:
        line += f"; the correction changed {counts['changed']} of them"
    line += f"; records: {out / 'records.jsonl'}" + (f"; grid: {counts['grid']}" if counts.get("grid") else "")
    if corrected and counts["changed"] == 0:
        hint = ("it acts only on requests that the negation set covers" if mode == "conditional" else
                f"--mode {mode} rarely acts on prompts; the default, --mode conditional, does")
        line += ("\nnote: the correction changed no image: these are the plain pipeline's images (none of the prompts "
                 f"made what the negation set holds, or the correction did not act: {hint})")
    return line


def run_profile_build(args: argparse.Namespace) -> int:
    import shutil

    for flag, given, built in (("--images", args.images, args.negation), ("--reference-images", args.reference_images,
                                                                          args.reference)):
        if given and built:
            raise ValueError(f"give {flag} or {'--negation' if flag == '--images' else '--reference'}, not both")
    if not (args.negation or args.images):
        raise ValueError("profile build needs --negation (a negation set file) or --images (a folder of images of "
                         "what must not be generated)")
    mode = check_safety_flags(argparse.Namespace(**{**vars(args), "negation": args.negation or args.images}),
                              files=False)
    if _canonical(mode) in flag_modes("bank_size"):
        raise ValueError(f"--mode {mode} calibrates on a bank of the pipeline's own samples, which a safety profile "
                         f"does not store: use safe-denoiser generate --negation FILE --mode {mode} instead")
    work = Path(args.out + ".build")
    if args.images or args.reference_images:
        from .negation_build import build_from_folder

        for folder, role, dest in ((args.images, "negation", "negation"), (args.reference_images, "reference", "reference")):
            if folder:
                report = build_from_folder(args.model, folder, work / f"{role}.safetensors", role=role, device=args.device,
                                           log=lambda line: print(f"warning: {line}", file=sys.stderr))
                print(report.summary())
                setattr(args, dest, str(report.path))
    mode = check_safety_flags(args)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    profile, _ = profile_from_args(args, pipe, mode, fallback_dir=work, log=print)
    profile.attach(pipe, check=not args.no_check).detach()  # the correction builds and matches the pipeline
    path = profile.save(args.out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote safety profile {path} (mode {profile.mode}, {len(profile.negation)} negation items"
          + (f", {len(profile.reference)} reference items" if profile.reference is not None else "")
          + f", for {args.model}); use it with: safe-denoiser generate --safety {path} ...")
    return 0


def run_examples(args: argparse.Namespace) -> int:
    from .examples import write_examples

    written = write_examples(args.out, images=args.images, prompts=args.prompts)
    for name, what in written.items():
        print(f"{name}: {what}")
    return 0

