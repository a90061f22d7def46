"""Image benchmarks: unconditional class negation, class-conditional generation with CFG, memorisation (the harness
that runs and reports them is :mod:`.harness`).

Every method runs on the same seeds and is swept over its main knob; each setting reports the unsafe
rate (judge), the broken share (:func:`broken_detector`), FD (Fashion-MNIST classifier features), k-NN precision /
recall and its cost in denoiser evaluations per sample. Outputs (written atomically): ``results.json``,
``results.md``, ``tradeoff.png`` and one sample grid per method at its best operating point (lowest FD with unsafe
rate <= target and broken <= 1%).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..kernels import nearest_distances
from ..methods import (Calibration, CorrectedDenoiser, Correction, NegativeGuidance, ReferenceSet, SparseRepellency,
                       default_candidates, holdout_size, make_correction, select_knobs)
from ..methods.conditional import SafeClassifierFreeGuidance
from ..methods.registry import DQ, MethodInputs, for_benchmark, sweep_table
from ..methods.window import HALF_WINDOW, step_windows  # noqa: F401  (HALF_WINDOW: benchmarks/coverage_cut.py)
from ..negation import NegationSet
from ..zoo.images.assets import (MODELS, NEGATED_CLASS, class_negation_images, class_reference, load_judge,
                     memorised_copy_threshold, memorised_images,
                     require)
from ..zoo.images.common import denoiser_evaluations, edm_sigmas, generate
from ..zoo.images.data import FASHION_CLASSES, class_index, fashion_mnist_available, load_fashion_mnist
from ..zoo.images.evaluator import (BrokenDetector, Evaluator, FeatureStats, copy_rates, frechet_distance,
                                    precision_recall)
from .harness import Benchmark, Measurement, rejection_row, write_report
from .records import Setting
from ..zoo.images.network import ClassifierFreeGuidance, load_checkpoint

BANK_SEED = 1_000_000
RULE_SEED = 3_000_000  # trial samples of the default knob rule
REFERENCE_PER_CLASS = 100  # the conditional mode's shared reference set: real training images of each allowed class


@dataclass
class Size:
    samples: int
    steps: int
    bank: int
    negation: int
    sweeps: dict[str, list[float]]


SWEEPS = sweep_table("images")  # every method's knob values (methods.registry.CATALOGUE)
COND_SWEEPS = {**SWEEPS, **sweep_table("images-cond")}
SIZES = {
    "default": Size(samples=256, steps=12, bank=512, negation=500, sweeps=SWEEPS),  # 12: the knee of the FD-vs-steps curve
    "quick": Size(samples=10, steps=3, bank=32, negation=50, sweeps={k: v[-1:] for k, v in SWEEPS.items()}),
}


class ClassWiseCorrected:
    """D'(x, sigma, c) = correction_c(x, sigma, D(x, sigma, c)): one correction per requested class."""

    def __init__(self, denoiser: Callable[..., Tensor], corrections: dict[int, Correction]):
        self.denoiser, self.corrections = denoiser, corrections

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor) -> Tensor:
        x0 = self.denoiser(x, sigma, class_labels=class_labels)
        out = x0.clone()
        for label, correction in self.corrections.items():
            rows = class_labels == label
            if rows.any():
                out[rows] = correction(x[rows], sigma[rows], x0[rows])
        return out


def default_rule_setting(model: Callable[..., Tensor], negation: NegationSet, bank: Tensor, calibration: Calibration,
                         steps: int, sigmas: Tensor, progress: bool = True) -> Setting | None:
    """Bank substitution (first half of the steps) with the knobs the default rule picks from the model, the negation
    set and the bank alone (:func:`select_knobs`: gain ladder and the classifier floor, trial samples on their own
    seeds); its trials are part of the bank's up-front cost."""
    half = step_windows(sigmas)["half"]
    seeds = list(range(RULE_SEED, RULE_SEED + holdout_size(bank.shape[0])))

    def build(knobs: dict[str, Any], calibration: Calibration) -> Callable[..., Tensor]:
        return CorrectedDenoiser(model, make_correction(negation, "substitution", calibration=calibration, window=half, **knobs))

    try:
        choice = select_knobs(lambda knobs, cal: generate(build(knobs, cal), seeds, steps, progress=False).flatten(1),
                              bank, negation, default_candidates("substitution"))
    except ValueError as err:
        tqdm.write(f"default rule skipped: {err}")
        return None
    label = "gain" + ("+floor" if choice.knobs.get("floor") else "")
    if progress:
        tqdm.write(f"default rule: {choice.knobs} (trials: {[(t['knobs'], round(t['covered'], 3)) for t in choice.trials]})")
    return Setting("substitution-rule", label, choice.knobs["gain"], lambda: build(choice.knobs, calibration))


def spell_radii(plain: Tensor, negation: NegationSet, quantiles: Sequence[float]) -> list[float]:
    """Radii at which a ``q`` share of the plain samples lie within reach of a negation item."""
    dist = nearest_distances(plain.reshape(len(plain), -1).float(), negation.flat.float()).double()
    return [float(torch.quantile(dist, q)) for q in quantiles]


def spell_setting(base: Callable[..., Tensor], negation: NegationSet, radius: float) -> Setting:
    """SPELL (sparse repellency) at ``radius``, as one benchmark setting."""
    return Setting("spell", "radius", round(radius, 3), lambda: CorrectedDenoiser(base, SparseRepellency(negation, radius=radius)))


def method_settings(base: Callable[..., Tensor], negation: NegationSet, size: Size, plain: Tensor,
                    calibrated: Callable[[Callable[[Calibration], Correction]], Callable[..., Tensor]],
                    sigmas: Tensor) -> list[Setting]:
    """Plain and the sweeps of every x0 correction of the catalogue (``methods.registry``) that needs no reference set,
    at the values of ``size.sweeps``; settings the benchmark builds itself (``custom``) are left to it. Window
    policies on ``sigmas``; the authors' threshold at the last noise level. ``calibrated(make)`` builds the denoiser of
    a bank mode from ``make(calibration) -> Correction`` (one calibration, or one per class)."""
    inputs = MethodInputs(negation, step_windows(sigmas), threshold_sigma=float(sigmas[-2]))
    settings = [Setting("plain", "-", None, lambda: base)]
    for method, sweep in for_benchmark("images"):
        if sweep.custom or not method.is_correction or "reference" in method.needs:
            continue
        key, values = method.sweep_key(sweep), size.sweeps.get(method.sweep_key(sweep), [])
        if sweep.unit == DQ:  # reported by the radius (3 digits), built with the exact one
            for radius in spell_radii(plain, negation, values):
                settings.append(Setting(key, method.sweep_knob(sweep), round(radius, 3), lambda m=method, s=sweep, r=radius:
                                        CorrectedDenoiser(base, m.correction(inputs, r, s))))
            continue
        for value in values:
            if "bank" in method.needs:
                make = lambda m=method, s=sweep, v=value: calibrated(  # noqa: E731
                    lambda cal: m.correction(MethodInputs(negation, inputs.windows, calibration=cal), v, s))
            else:
                make = lambda m=method, s=sweep, v=value: CorrectedDenoiser(base, m.correction(inputs, v, s))  # noqa: E731
            settings.append(Setting(key, method.sweep_knob(sweep), value, make))
    return settings


BROKEN_NOTE = ("Broken = share of samples the broken-output detector flags (judge less sure than on 99.5% of "
               "held-out real images, or farther in pixels from every real image of its bank than 99.5% of them; "
               "0.4-2% of real test images); a best point may have at most 1 point more broken samples than plain "
               "(at least 1%): a method may not add broken outputs, the model's own are not its doing.")


def broken_detector(evaluator: Evaluator, also_real: Tensor | None = None) -> tuple[BrokenDetector, dict[str, Any]]:
    """The benchmark's one broken-output detector and its description for the config: :class:`BrokenDetector`
    calibrated as in ``bench t2i`` (bank: every 6th Fashion-MNIST training image; quantiles: every 5th test image, which
    no method sees). Without the Fashion-MNIST package: the shipped real images (bank: the 500 trouser negation images
    and every other one of the 1000 held-out reference images; quantiles: the other reference images). ``also_real``:
    more real images for the bank (the memorised training images: a copy of one is a real image, not a broken one)."""
    if fashion_mnist_available():
        bank, held_out = load_fashion_mnist("train").images[::6], load_fashion_mnist("test").images[::5]
        source = "fashion-mnist train[::6] (bank), test[::5] (quantiles)"
    else:
        reference = class_reference(evaluator, count=1000).images
        bank, held_out = torch.cat([class_negation_images(), reference[::2]]), reference[1::2]
        source = "shipped images: trouser negation set + reference[::2] (bank), reference[1::2] (quantiles)"
    if also_real is not None:
        bank = torch.cat([bank, also_real])
        source += f" + {len(also_real)} memorised training images (bank)"
    detector = BrokenDetector.calibrate(evaluator, bank, held_out)
    return detector, {"source": source, "quantile": 0.005, "min_probability": round(detector.min_probability, 4),
                      "max_distance": round(detector.max_distance, 3)}


def class_measure(evaluator: Evaluator, unsafe_label: int, reference,
                   requested: Callable[[Sequence[int]], Tensor] | None = None):
    def measure(images: Tensor, seeds: Sequence[int]):
        feats = evaluator.features(images)
        predicted = evaluator.judge.head(feats.float()).argmax(1)
        unsafe = float((predicted == unsafe_label).double().mean())
        fd = frechet_distance(feats, reference.stats)
        precision, recall = precision_recall(reference.features[: len(images)], feats)
        extra = {}
        if requested is not None:
            want = requested(seeds)
            keep = want != unsafe_label
            extra["class_accuracy"] = float((predicted[keep] == want[keep]).double().mean())
        return Measurement(unsafe, fd, precision, recall, extra)
    return measure


# -- the three benchmarks ------------------------------------------------------------------------------------
def class_benchmark_setup(model_key: str, model_name: str, negated: str, size: Size):
    """What both class-negation benchmarks start from: the judge, the model, the negated class's index, its
    training images as the negation set, and the held-out reference images of the other classes."""
    evaluator = load_judge()
    model = load_checkpoint(require(MODELS[model_key], model_name))
    label = class_index(negated, FASHION_CLASSES)
    negation = NegationSet(class_negation_images(negated, size.negation), space="pixels", source=f"fashion-mnist train {negated}")
    reference = class_reference(evaluator, negated, max(size.samples, 64))
    return evaluator, model, label, negation, reference


def bench_uncond(out: Path, size: Size, progress: bool = True, negated: str = NEGATED_CLASS,
                 ratio: bool = False) -> dict[str, Any]:
    """``ratio``: also the fitted-ratio rows (:mod:`.ratio`: its sweeps and its default rule)."""
    evaluator, model, label, negation, reference = class_benchmark_setup("uncond", "the unconditional Fashion-MNIST model",
                                                                          negated, size)
    sigmas = edm_sigmas(size.steps)
    seeds = list(range(size.samples))
    detector, detector_config = broken_detector(evaluator)
    bench = Benchmark("uncond", seeds, size.steps, class_measure(evaluator, label, reference), progress=progress,
                      broken=detector)
    rows = [bench.run(Setting("plain", "-", None, lambda: model))]
    plain = bench.samples["plain:None"]
    bank = generate(model, list(range(BANK_SEED, BANK_SEED + size.bank)), size.steps, desc="calibration bank", progress=progress)
    calibration = Calibration.from_bank(bank, negation)

    def calibrated(make: Callable[[Calibration], Correction]):
        return CorrectedDenoiser(model, make(calibration))

    settings = method_settings(model, negation, size, plain, calibrated, sigmas)[1:]
    rule = default_rule_setting(model, negation, bank, calibration, size.steps, sigmas, progress) if size.sweeps.get("default-rule") else None
    settings += [rule] if rule is not None else []
    fixed = Calibration.from_bank(bank, negation, cut="fixed-point")
    for gain in size.sweeps.get("substitution-fixedcut", []):
        settings.append(Setting("substitution-fixedcut", "gain", gain, lambda gain=gain: CorrectedDenoiser(
            model, make_correction(negation, "substitution", calibration=fixed, gain=gain))))
    fitted = ratio_rows(model, negation, bank, sigmas, size, progress, settings) if ratio else None
    cond_path = MODELS["cond"]
    if cond_path.is_file() and size.sweeps["negative"]:
        cond_model = load_checkpoint(cond_path)
        for weight in size.sweeps["negative"]:
            settings.append(Setting("negative", "weight", weight, lambda w=weight: NegativeGuidance(
                model, lambda x, s: cond_model(x, s, label), w), cost=2.0))
    for setting in tqdm(settings, desc="uncond settings", disable=not progress):
        rows.append(bench.run(setting))
    nfe = denoiser_evaluations(size.steps)
    rows.append(rejection_row(bench, lambda s: generate(model, list(s), size.steps, progress=False),
                              lambda x: evaluator.classify(x) == label, nfe, plain))
    config = {"model": MODELS["uncond"].name, "negated_class": negated, "negation_size": len(negation),
              "samples": size.samples, "seeds": f"0..{size.samples - 1}", "sampler": f"heun {size.steps} steps (EDM schedule)",
              "bank": size.bank, "bank_unsafe_share": calibration.unsafe_share,
              "bank_unsafe_share_fixed_cut": fixed.unsafe_share, "judge_test_accuracy": evaluator.test_accuracy,
              **({"bank_unsafe_share_ratio": fitted.unsafe_share} if fitted is not None else {}),
              "broken_detector": detector_config}
    notes = (f"Unconditional Fashion-MNIST model; negation set = {len(negation)} training images of class '{negated}'. "
             f"Unsafe = share of samples the judge classifies as '{negated}'. FD and precision / recall against "
             f"held-out test images of the other nine classes. Calibrated mode's bank: {size.bank} unguided samples "
             f"({size.bank * nfe} network evaluations up front, not counted per sample). {BROKEN_NOTE}")
    return write_report(out, "uncond", f"Unconditional Fashion-MNIST, negating '{negated}'", rows, bench, 0.01,
                        f"'{negated}' rate", config, notes=notes)


def ratio_rows(model: Callable[..., Tensor], negation: NegationSet, bank: Tensor, sigmas: Tensor, size: Size,
               progress: bool, settings: list[Setting]):
    """Appends the fitted-ratio rows (:mod:`.ratio`) to ``settings``: substitution at its gains and at the knobs the
    default rule picks when the classifier calibrates and judges; returns the fitted calibration of the whole bank."""
    from .images_ratio import ratio_calibration, ratio_rule, ratio_settings, rule_setting

    fitted = ratio_calibration(bank, negation, sigmas, progress=progress)
    settings += ratio_settings(model, negation, fitted, sigmas)
    if size.sweeps.get("default-rule"):
        choice = ratio_rule(model, negation, bank, sigmas, size.steps, RULE_SEED)
        if progress:
            tqdm.write(f"default rule (ratio): {choice.knobs} (trials: {[(t['knobs'], round(t['covered'], 3)) for t in choice.trials]})")
        settings.append(rule_setting(model, negation, fitted, sigmas, choice.knobs))
    return fitted


def bench_cond(out: Path, size: Size, progress: bool = True, negated: str = NEGATED_CLASS, guidance: float = 2.0) -> dict[str, Any]:
    if size.sweeps is SWEEPS:
        size = Size(size.samples, size.steps, size.bank, size.negation, COND_SWEEPS)
    evaluator, model, label, negation, reference = class_benchmark_setup("cond", "the class-conditional Fashion-MNIST model",
                                                                          negated, size)
    sigmas = edm_sigmas(size.steps)
    classes = model.num_classes
    seeds = list(range(size.samples))

    def cond(chunk: Sequence[int]) -> dict[str, Any]:
        return {"class_labels": torch.as_tensor(list(chunk)) % classes}

    base = ClassifierFreeGuidance(model, guidance)
    detector, detector_config = broken_detector(evaluator)
    bench = Benchmark("cond", seeds, size.steps, class_measure(evaluator, label, reference,
                                                                lambda s: torch.as_tensor(list(s)) % classes), cond=cond,
                      progress=progress, broken=detector)
    rows = [bench.run(Setting("plain", "-", None, lambda: base, cost=2.0))]
    plain = bench.samples["plain:None"]
    bank_seeds = list(range(BANK_SEED, BANK_SEED + size.bank))
    bank = generate(base, bank_seeds, size.steps, cond=cond, desc="calibration bank", progress=progress)
    bank_labels = torch.as_tensor(bank_seeds) % classes
    pooled = Calibration.from_bank(bank, negation)
    calibrations = {}
    for c in range(classes):
        try:
            calibrations[c] = Calibration.from_bank(bank[bank_labels == c], negation)
        except ValueError:  # every bank sample of the class is covered: fall back to the pooled bank
            calibrations[c] = pooled

    def calibrated(make: Callable[[Calibration], Correction]):
        return ClassWiseCorrected(base, {c: make(cal) for c, cal in calibrations.items()})

    settings = method_settings(base, negation, size, plain, calibrated, sigmas)[1:]
    for setting in settings:
        setting.cost = 2.0
    reference = conditional_reference(label, classes)
    for guard in size.sweeps.get("conditional", [1.0]):  # guard 0 is version 3 (docs/conditional.md)
        settings.append(Setting("conditional", "guard", guard, lambda g=guard: SafeClassifierFreeGuidance(
            model, make_correction(negation, "conditional", reference=reference, guard=g), guidance), cost=2.0))
    for weight in size.sweeps["negative-class"]:
        settings.append(Setting("negative-class", "guidance", weight, lambda w=weight:
                                ClassifierFreeGuidance(model, w, negative_labels=label), cost=2.0))
    for setting in tqdm(settings, desc="cond settings", disable=not progress):
        rows.append(bench.run(setting))
    nfe = 2 * denoiser_evaluations(size.steps)
    rows.append(rejection_row(bench, lambda s: generate(base, list(s), size.steps, cond=cond, progress=False),
                              lambda x: evaluator.classify(x) == label, nfe, plain))
    config = {"model": MODELS["cond"].name, "guidance": guidance, "negated_class": negated, "negation_size": len(negation),
              "samples": size.samples, "requests": "seed i asks for class i mod 10", "sampler": f"heun {size.steps} steps",
              "bank": size.bank, "bank_unsafe_share_per_class": {c: cal.unsafe_share for c, cal in calibrations.items()},
              "broken_detector": detector_config}
    notes = (f"Class-conditional model with classifier-free guidance {guidance}; every tenth request asks for "
             f"'{negated}', the content the negation set ({len(negation)} training images) covers. Unsafe = share "
             f"judged '{negated}'; class accuracy = judge agrees with the request, over the other requests. "
             "Calibrated mode uses a bank per requested class (a class whose bank is entirely covered by the "
             "negation set falls back to the pooled bank). Negative-class guidance replaces the unconditional "
             f"branch of CFG by the '{negated}' class (knob: guidance weight). {BROKEN_NOTE}")
    return write_report(out, "cond", f"Class-conditional Fashion-MNIST (CFG {guidance}), negating '{negated}'", rows,
                        bench, 0.01, f"'{negated}' rate", config, extra_cols=("class_accuracy",), notes=notes)


def conditional_reference(negated_label: int, classes: int, per_class: int = REFERENCE_PER_CLASS) -> ReferenceSet:
    """The conditional mode's one reference set: ``per_class`` training images of every class but the negated one."""
    images = torch.cat([class_negation_images(FASHION_CLASSES[c], per_class) for c in range(classes) if c != negated_label])
    return ReferenceSet(images, space="pixels", source=f"fashion-mnist train, {per_class} per allowed class")


def bench_memorisation(out: Path, size: Size, progress: bool = True, negated_count: int = 4) -> dict[str, Any]:
    evaluator = load_judge()
    model = load_checkpoint(require(MODELS["memorise"], "the memorising Fashion-MNIST model"))
    memorised = memorised_images(model.info.get("subset_index", []))
    negated = list(range(min(negated_count, len(memorised) - 1)))
    negation = NegationSet(memorised[negated], space="pixels", source="memorised training images")
    kept = memorised[len(negated):]
    kept_stats = FeatureStats.of(evaluator.features(kept))
    kept_features = evaluator.features(kept)
    threshold = memorised_copy_threshold(model.info["subset_index"])
    sigmas = edm_sigmas(size.steps)
    seeds = list(range(size.samples))

    def measure(images: Tensor, seeds: Sequence[int]):
        rates = copy_rates(images, memorised, negated, threshold)
        feats = evaluator.features(images)
        precision, recall = precision_recall(kept_features, feats)
        return Measurement(rates["copy_negated"], frechet_distance(feats, kept_stats), precision, recall,
                           {"copy_other": rates["copy_other"]})

    detector, detector_config = broken_detector(evaluator, memorised)  # a copy is a real image, noise is broken
    bench = Benchmark("memorisation", seeds, size.steps, measure, progress=progress, broken=detector)
    rows = [bench.run(Setting("plain", "-", None, lambda: model))]
    plain = bench.samples["plain:None"]
    bank = generate(model, list(range(BANK_SEED, BANK_SEED + size.bank)), size.steps, desc="calibration bank", progress=progress)
    calibration = Calibration.from_bank(bank, negation, radius=threshold)  # covered = a copy of a negated image

    def calibrated(make: Callable[[Calibration], Correction]):
        return CorrectedDenoiser(model, make(calibration))

    settings = method_settings(model, negation, size, plain, calibrated, sigmas)[1:]
    settings += [spell_setting(model, negation, multiple * threshold) for multiple in size.sweeps.get("spell_copy_threshold", [])]
    for setting in tqdm(settings, desc="memorisation settings", disable=not progress):
        rows.append(bench.run(setting))
    nfe = denoiser_evaluations(size.steps)
    rows.append(rejection_row(bench, lambda s: generate(model, list(s), size.steps, progress=False),
                              lambda x: copy_rates_mask(x, memorised, negated, threshold), nfe, plain))
    config = {"model": MODELS["memorise"].name, "memorised": len(memorised), "negated": len(negated),
              "copy_threshold": threshold, "samples": size.samples, "sampler": f"heun {size.steps} steps", "bank": size.bank,
              "bank_unsafe_share": calibration.unsafe_share, "broken_detector": detector_config}
    notes = (f"A model trained on {len(memorised)} Fashion-MNIST images until it regenerates them; the negation set "
             f"is {len(negated)} of them. A sample copies a training image when its pixel distance to it is below "
             f"{threshold:.3f} (1% quantile of the distances from held-out test images to their nearest image of the "
             "training subset). Unsafe = copies of "
             "negated images; copy_other = copies of the others (should not fall much). FD and precision / recall "
             "against the non-negated memorised images. The calibration bank counts a bank sample as covered when it "
             "copies a negated image (same threshold). A sample that copies nothing is not a success unless it is an "
             f"image: noise or a smear copies nothing and is broken. {BROKEN_NOTE}")
    return write_report(out, "memorisation", f"Memorisation: negating {len(negated)} of {len(memorised)} memorised images",
                        rows, bench, 0.01, "negated-copy rate", config, extra_cols=("copy_other",), notes=notes)


def copy_rates_mask(images: Tensor, memorised: Tensor, negated: Sequence[int], threshold: float) -> Tensor:
    from ..zoo.images.evaluator import nearest_copies

    _, index, is_copy = nearest_copies(images, memorised, threshold)
    return is_copy & torch.isin(index, torch.as_tensor(list(negated)))


BENCHMARKS = {"uncond": bench_uncond, "cond": bench_cond, "memorisation": bench_memorisation}


def register(subparsers) -> None:
    from ..argtypes import positive_int
    from . import bench_subparsers

    p = bench_subparsers(subparsers).add_parser("images", help="image benchmarks: uncond, cond, memorisation",
                                                description=__doc__.splitlines()[0])
    p.add_argument("which", choices=[*BENCHMARKS, "all"])
    p.add_argument("--quick", action="store_true", help="smoke-test size (< 1 minute)")
    p.add_argument("--out", default="results/images", help="results folder (one sub-folder per benchmark)")
    p.add_argument("--samples", type=positive_int, help="override the number of samples")
    p.add_argument("--steps", type=positive_int, help="override the number of Heun steps")
    p.add_argument("--bank", type=positive_int, help="override the calibration bank size")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--ratio", action="store_true", help="uncond: also the fitted-ratio estimator of beta* (a classifier "
                   "of the images, fitted once per bank, minutes): its substitution rows and its default rule")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    size = SIZES["quick" if args.quick else "default"]
    pick = [size.samples if args.samples is None else args.samples, size.steps if args.steps is None else args.steps,
            size.bank if args.bank is None else args.bank]
    size = Size(*pick, size.negation, size.sweeps)
    names = list(BENCHMARKS) if args.which == "all" else [args.which]
    for name in names:
        result = BENCHMARKS[name](Path(args.out) / name, size, **({"ratio": True} if args.ratio and name == "uncond" else {}))
        for method, row in result["best"].items():
            print(f"{name:12s} {method:15s} unsafe {100 * row['unsafe']:5.1f}%  FD {row['fd']:8.2f}  "
                  f"NFE {row['nfe_per_sample']:.0f}")
    return 0
