"""The web page's work as plain functions: one plain-vs-safe run on the shipped models, testable without a browser.

Everything here calls the library: the EDM image models, their sampler and the calibration banks come from
:mod:`safedenoiser.zoo.images` (as in ``bench images`` / ``demo``), the text-to-image runs go through
:class:`safedenoiser.bench.t2i.TextToImageBench` (the diffusers hook, negative prompt, SLD, SAFREE), uploaded
negation images through :func:`safedenoiser.pipelines.negation_build.build_from_folder` (``negation build --strict``'s
checks and messages), and the labels come from the shipped Fashion-MNIST judge. The plain and the safe images use
the same seeds; the plain ones are exactly what the model gives without any correction.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from PIL import Image, ImageDraw, ImageFont

from .. import __version__, fileio
from ..imageio import FORMAT_NAMES, ImageReadError, image_size
from ..zoo.images.assets import MODELS as MODEL_FILES
from ..zoo.images.assets import SHIPPED_NEGATION as SHIPPED_COUNT
from ..zoo.images.assets import class_negation_images, class_reference, load_judge, require
from ..bench.images import BANK_SEED, conditional_reference
from ..zoo.images.common import edm_sigmas, generate
from ..zoo.images.grids import to_uint8
from ..zoo.images.data import FASHION_CLASSES, DataError
from ..zoo.images.network import ClassifierFreeGuidance, load_checkpoint
from ..methods import CorrectedDenoiser, Correction, NegativeGuidance, ReferenceSet, Window
from ..methods.conditional import SafeClassifierFreeGuidance
from ..methods.ratio import ESTIMATORS, calibrate
from ..methods.registry import CATALOGUE, MethodInputs, accepted_knobs, mode_name
from ..methods.safree import SafreeConfig
from ..methods.sld import SLDConfig
from ..methods.window import step_windows, timestep_windows
from ..negation import NegationSet
from ..pipelines.negation_build import build_from_folder
from ..pipelines.noise_levels import ve_sigma_at_timestep
from ..results import save_figure
from ..bench.t2i import NEGATIVE_PROMPT, T2ISetting, T2ISize, TextToImageBench
from ..zoo.t2i.pipeline import SHIPPED_NAME, load_text_pipeline
from ..zoo.t2i.prompts import PromptRow

Progress = Callable[[float, str], None]

AVOIDED = "trouser"  # the shipped negation set's class; its share is reported for both grids
MODELS = {
    "fashion-t2i": "text-to-image (prompt)",
    "fashion-cond": "class-conditional (class)",
    "fashion-uncond": "unconditional",
}
DEFAULT_GUIDANCE = {"fashion-t2i": 3.0, "fashion-cond": 2.0, "fashion-uncond": 1.0}
DEFAULT_PROMPT = "khakis"  # an evasive prompt of assets/t2i_prompts/evasive.csv: no trouser word, trousers when plain
SHIPPED_NEGATION = "shipped"
UPLOADED_NEGATION = "upload"
PROFILE_NEGATION = "profile"  # the safety profile given to serve --safety


class WebInputError(ValueError):
    """A request or an upload the page refuses; the message is shown on the page as is."""


@dataclass(frozen=True)
class Method:
    """A way to make the right-hand grid: ``knob`` is its main knob (None: it has none), ``default`` its value per
    model (benchmarks' best), ``models`` where it applies, ``correction`` whether it corrects the predicted x0 (and so
    reports diagnostics)."""

    label: str
    knob: str | None
    default: dict[str, float]
    models: tuple[str, ...] = tuple(MODELS)
    correction: bool = True
    bank: bool = False
    concept: bool = False
    help: str = ""


def web_methods() -> dict[str, Method]:
    """The page's methods: every entry of the catalogue (``methods.registry``) with web defaults, in its order;
    ``bank``: it calibrates on a bank (takes the beta* estimator), ``concept``: its class takes ``concept=``."""
    return {m.name: Method(m.label, m.knob, dict(m.web), tuple(m.web), correction=m.is_correction,
                           bank="bank" in m.needs, concept=m.cls is not None and "concept" in accepted_knobs(m.cls),
                           help=m.help)
            for m in CATALOGUE.values() if m.web}


METHODS: dict[str, Method] = web_methods()
CONCEPT_MODEL = "fashion-t2i"  # the concept branch encodes a prompt: text pipelines only


def takes_estimator(model: str, method: str) -> bool:
    """Whether ``method`` on ``model`` uses ``Request.estimator`` (the methods that calibrate on a bank)."""
    spec = METHODS.get(mode_name(method))
    return spec is not None and spec.bank and model in spec.models


def takes_concept(model: str, method: str) -> bool:
    """Whether ``method`` on ``model`` uses ``Request.concept`` / ``steer`` (the conditional mode, text-to-image)."""
    spec = METHODS.get(mode_name(method))
    return spec is not None and spec.concept and model == CONCEPT_MODEL and model in spec.models


@dataclass(frozen=True)
class Limits:
    """Caps per request (the page refuses more, naming the cap)."""

    max_images: int = 32
    max_steps: int = 50
    max_uploads: int = 64
    max_upload_bytes: int = 2_000_000
    max_upload_side: int = 1024
    bank: int = 64  # calibration bank (model samples) for the calibrated / substitution modes


@dataclass(frozen=True)
class Request:
    """One plain-vs-safe run. ``guidance`` and ``knob`` None mean the model's / method's default."""

    model: str = "fashion-t2i"
    prompt: str = DEFAULT_PROMPT
    class_name: str = AVOIDED
    guidance: float | None = None
    seed: int = 0
    count: int = 8
    steps: int = 10
    method: str = "conditional"
    knob: float | None = None
    estimator: str = "kernel"  # beta* of the bank methods: kernel (kNN split) or ratio (fitted classifier, methods/ratio.py)
    concept: str | None = None  # conditional mode, fashion-t2i: words a flagged request is steered away from (None: off)
    steer: float | None = 1.0  # the scale of that steered direction (>= 0; None: 1)

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.count))


def resolve(request: Request, limits: Limits = Limits()) -> Request:
    """``request`` checked against ``limits`` with the defaults filled in; :class:`WebInputError` names what is wrong."""
    if request.model not in MODELS:
        raise WebInputError(f"unknown model {request.model!r}; choose one of {', '.join(MODELS)}")
    request = replace(request, method=mode_name(request.method))  # an old name (``reference``) still works
    method = METHODS.get(request.method)
    if method is None:
        raise WebInputError(f"unknown method {request.method!r}; choose one of {', '.join(METHODS)}")
    if request.model not in method.models:
        raise WebInputError(f"{request.method} works with {', '.join(method.models)} only, not {request.model}")
    if request.estimator not in ESTIMATORS:
        raise WebInputError(f"unknown beta* estimator {request.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if request.estimator != "kernel" and not method.bank:
        raise WebInputError(f"the {request.estimator} estimator is for the methods that calibrate on a bank "
                            f"({', '.join(n for n, m in METHODS.items() if m.bank)}), not {request.method}")
    concept, steer = _concept(request)
    count, steps, seed = _integer(request.count, "number of images"), _integer(request.steps, "steps"), _integer(request.seed, "seed")
    if not 1 <= count <= limits.max_images:
        raise WebInputError(f"number of images must be between 1 and {limits.max_images}, got {count}")
    if not 1 <= steps <= limits.max_steps:
        raise WebInputError(f"steps must be between 1 and {limits.max_steps}, got {steps}")
    if not 0 <= seed <= 2**31 - count:
        raise WebInputError(f"first seed must be between 0 and {2**31 - count}, got {seed}")
    knob = method.default.get(request.model) if request.knob is None else _number(request.knob, method.knob or "knob")
    guidance = DEFAULT_GUIDANCE[request.model] if request.guidance is None else _number(request.guidance, "guidance")
    prompt, class_name = request.prompt, request.class_name
    if request.model == "fashion-t2i":
        prompt = " ".join(str(prompt or "").split())
        if not prompt:
            raise WebInputError("the text-to-image model needs a prompt")
        if len(prompt) > 200:
            raise WebInputError(f"the prompt has {len(prompt)} characters; at most 200")
    if request.model == "fashion-cond" and class_name not in FASHION_CLASSES:
        raise WebInputError(f"unknown class {class_name!r}; choose one of {', '.join(FASHION_CLASSES)}")
    return replace(request, count=count, steps=steps, seed=seed, knob=knob, guidance=guidance, prompt=prompt,
                   concept=concept, steer=steer)


def _concept(request: Request) -> tuple[str | None, float]:
    """``request``'s concept (whitespace collapsed; empty: None, off) and steer, refused by name where they do not
    apply: the concept needs the conditional mode on the text-to-image model, steer >= 0 needs a concept."""
    concept = " ".join(str(request.concept or "").split()) or None
    steer = 1.0 if request.steer is None else _number(request.steer, "steer")
    if concept is not None and not takes_concept(request.model, request.method):
        takers = ", ".join(n for n, m in METHODS.items() if m.concept)
        raise WebInputError(f"a concept is for the {takers} method on the text-to-image model ({CONCEPT_MODEL}), "
                            f"not {request.method} on {request.model}")
    if concept is not None and len(concept) > 200:
        raise WebInputError(f"the concept has {len(concept)} characters; at most 200")
    if steer < 0:
        raise WebInputError(f"steer must be >= 0 (the scale of the direction away from the concept), got {steer:g}")
    if concept is None and steer != 1.0:
        raise WebInputError(f"steer {steer:g} needs a concept (it scales the direction away from the concept's words): "
                            "enter a concept, or leave steer at 1")
    return concept, steer


def _integer(value: Any, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WebInputError(f"{what} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise WebInputError(f"{what} must be a whole number, got {value!r}")
    return int(number)


def _number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WebInputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise WebInputError(f"{what} must be a finite number, got {value!r}")
    return number


# -- negation sets ---------------------------------------------------------------------------------------------
def shipped_negation() -> NegationSet:
    """The shipped negation set: the first 500 Fashion-MNIST training trousers (as ``bench images`` / ``demo``)."""
    return NegationSet(class_negation_images(AVOIDED, SHIPPED_COUNT), space="pixels",
                       source=f"fashion-mnist train, first {SHIPPED_COUNT} '{AVOIDED}' images")


def negation_from_uploads(paths: Sequence[str | Path], limits: Limits = Limits()) -> NegationSet:
    """Uploaded image files -> a pixel-space negation set, exactly as ``safe-denoiser negation build --model
    fashion-t2i --strict`` encodes them (grey, resized to 28x28, in [-1, 1]), after the page's caps on the number of
    files, their size in bytes and in pixels. Any file that is not a readable image (by content: PNG, JPEG, WebP,
    GIF, BMP, TIFF) is refused by name; what reading chose (first of several frames, stretched or enlarged images)
    is kept, by file name, in ``metadata['reading_notes']``. Messages name files, never the server's folders."""
    files = [Path(p) for p in (paths or [])]
    if not files:
        raise WebInputError("no negation images uploaded: add image files of what must not be generated, "
                            "or choose the shipped set")
    if len(files) > limits.max_uploads:
        raise WebInputError(f"{len(files)} files uploaded; at most {limits.max_uploads} per request")
    for path in files:
        size = path.stat().st_size
        if size > limits.max_upload_bytes:
            raise WebInputError(f"{path.name} is {size / 1e6:.1f} MB; at most {limits.max_upload_bytes / 1e6:.1f} MB per file")
        _check_pixels(path, limits.max_upload_side)
    with tempfile.TemporaryDirectory(prefix="safedenoiser-upload-") as tmp:
        try:
            report = build_from_folder(SHIPPED_NAME, files, Path(tmp) / "negation.safetensors", strict=True,
                                       resume=False, progress=False, rank=0, world_size=1)
        except ImageReadError as err:
            message = _file_names(str(err), files)
            hint = "" if FORMAT_NAMES in message else f" (upload {FORMAT_NAMES} images)"
            raise WebInputError(message + hint) from None
        negation = NegationSet.load(report.path)
    names = ", ".join(p.name for p in files[:5]) + (" ..." if len(files) > 5 else "")
    notes = [_file_names(note, files) for note in [*report.warnings.values(), *report.notes]]
    return NegationSet(negation.data, space=negation.space, source=f"{len(files)} uploaded images ({names})",
                       metadata={**negation.metadata, **({"reading_notes": notes} if notes else {})})


def _file_names(message: str, files: Sequence[Path]) -> str:
    """``message`` with each uploaded file's server path replaced by its name."""
    for path in sorted(files, key=lambda p: len(str(p)), reverse=True):
        message = message.replace(str(path), path.name).replace(str(path.parent) + os.sep, "")
    return message


def without_paths(message: str, uploads: Sequence[str | Path] = ()) -> str:
    """``message`` with the server's paths replaced by file names: every upload by its name, then anything under
    the temporary folder by its last component (what the page's status box shows)."""
    message = _file_names(message, [Path(p) for p in uploads])
    temp = re.escape(str(Path(tempfile.gettempdir()).resolve()))
    return re.sub(rf"(?:{temp}|/tmp)/(?:[^\s'\"/]+/)*([^\s'\"/]+)", r"\1", message)


def _check_pixels(path: Path, side: int) -> None:
    """Refuse images larger than ``side`` pixels before decoding them; files that are not images pass here and are
    named by the reader. Only the formats the reader accepts are opened (by content, never EPS / PDF)."""
    try:
        width, height = image_size(path)
    except ImageReadError as err:
        if "decompression bomb" in str(err):
            raise WebInputError(f"{path.name} has too many pixels; at most {side}x{side}") from None
        return  # not an image of a supported format: read_image (negation build) reports it with its reason
    if max(width, height) > side:
        raise WebInputError(f"{path.name} is {width}x{height} pixels; at most {side}x{side} "
                            "(images are resized to 28x28 grey)")


# -- results ---------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """Plain and safe images (B, 1, 28, 28) in [-1, 1] on the same seeds, the judge's labels, and per correction
    call: ``sigma`` (VE), ``active`` (share of rows the correction changed), ``weight`` (mean weight over them)."""

    request: Request
    plain: Tensor
    safe: Tensor
    plain_labels: list[str]
    safe_labels: list[str]
    diagnostics: list[dict[str, float]]
    negation: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def share(self, labels: Sequence[str], name: str = AVOIDED) -> float:
        return sum(label == name for label in labels) / max(1, len(labels))

    def summary(self) -> str:
        r = self.request
        plain, safe = self.share(self.plain_labels), self.share(self.safe_labels)
        changed = int((self.plain != self.safe).flatten(1).any(1).sum())
        label = METHODS[r.method].label + (f" (concept '{r.concept}', steer {r.steer:g})" if r.concept else "")
        return (f"{r.count} images, seeds {r.seed}-{r.seed + r.count - 1}: judged '{AVOIDED}' plain "
                f"{round(plain * r.count)}/{r.count} ({100 * plain:.0f}%), {label} "
                f"{round(safe * r.count)}/{r.count} ({100 * safe:.0f}%); {changed} of {r.count} images changed; "
                f"{self.seconds.get('total', 0):.1f} s")

    def record(self) -> dict[str, Any]:
        """The JSON record of the run: settings, negation set, labels, shares, diagnostics, times."""
        request = asdict(self.request)
        if self.request.model != "fashion-t2i":
            request.pop("prompt")
        if self.request.model != "fashion-cond":
            request.pop("class_name")
        method = METHODS[self.request.method]
        return {"safedenoiser": __version__, "request": request, "seeds": self.request.seeds,
                "method": {"name": self.request.method, "label": method.label, "knob": method.knob,
                           "value": self.request.knob},
                "sampler": "heun, EDM schedule" if self.request.model != "fashion-t2i" else "the pipeline's scheduler",
                "negation": self.negation, "judge": "shipped Fashion-MNIST judge (assets/fashion_judge.safetensors)",
                "labels": {"plain": self.plain_labels, "safe": self.safe_labels},
                f"{AVOIDED}_share": {"plain": self.share(self.plain_labels), "safe": self.share(self.safe_labels)},
                "diagnostics": self.diagnostics, "seconds": self.seconds, "torch_threads": torch.get_num_threads()}


class _Ticker:
    """Progress in images x model calls: ``tick()`` per model call adds ``weight`` (the images of the current draw);
    reports ``progress(done / total, phase)``."""

    def __init__(self, progress: Progress | None, total: float):
        self.progress, self.total, self.done, self.phase, self.weight = progress, max(1.0, total), 0.0, "", 1

    def tick(self, *_: Any) -> None:
        self.done += self.weight
        self.say(self.phase)

    def say(self, phase: str) -> None:
        """Report ``phase`` now, without advancing (work that is not model calls)."""
        self.phase = phase
        if self.progress is not None:
            self.progress(min(1.0, self.done / self.total), self.phase)


class _Recorder:
    """A correction's diagnostics callback: per call, sigma, share of rows active and their mean weight."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def __call__(self, diagnostics: dict[str, Tensor]) -> None:
        active = diagnostics["active"].detach().cpu()
        weight = diagnostics.get("weight")
        mean = 0.0
        if weight is not None and bool(active.any()):
            mean = float(weight.detach().double().cpu()[active].mean())
        self.rows.append({"sigma": float(diagnostics["sigma"].detach().reshape(-1)[0]),
                          "active": float(active.double().mean()), "weight": mean})


# -- the engine ------------------------------------------------------------------------------------------------
class Engine:
    """Loads the shipped models, judge and sets once and runs requests (one at a time: the page queues them)."""

    #: per-request items kept (calibration banks, reference sets of uploaded negation sets); the oldest go first
    KEEP = 16

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        self._cache: dict[Any, Any] = {}

    def _cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
            per_request = [k for k in self._cache if isinstance(k, tuple)]  # dicts keep insertion order
            for old in per_request[:-self.KEEP]:
                del self._cache[old]
        return self._cache[key]

    def model(self, name: str) -> Any:
        """The EDM network of ``fashion-uncond`` / ``fashion-cond``, or the ``fashion-t2i`` pipeline."""
        if name == "fashion-t2i":
            return self._cached(name, load_text_pipeline)
        key = name.removeprefix("fashion-")
        return self._cached(name, lambda: load_checkpoint(require(MODEL_FILES[key], f"the shipped {name} model")))

    def judge(self) -> Any:
        return self._cached("judge", load_judge)

    def shipped_negation(self) -> NegationSet:
        return self._cached("negation", shipped_negation)

    def reference(self, negation: NegationSet) -> Any:
        """The conditional mode's one reference set (100 training images of each other class, as ``bench images
        cond``; the shipped test images of the other classes without Fashion-MNIST), less what ``negation`` covers."""
        def make() -> Any:
            try:
                images = conditional_reference(FASHION_CLASSES.index(AVOIDED), len(FASHION_CLASSES)).data
            except DataError:
                images = class_reference(self.judge(), exclude=AVOIDED).images
            return ReferenceSet.from_samples(images, negation, space="pixels", source="allowed Fashion-MNIST images")

        return self._cached(("reference", negation.content_hash), make)

    def preload(self) -> None:
        """Load every model, the judge and the shipped sets (the first request is then faster)."""
        for name in MODELS:
            self.model(name)
        self.judge()
        self.reference(self.shipped_negation())

    # -- one run ---------------------------------------------------------------------------------------------
    def run(self, request: Request, negation: NegationSet | None = None, progress: Progress | None = None,
            profile: Any = None) -> RunResult:
        """Plain and safe images of ``request`` on the same seeds (``negation``: default the shipped set; ``profile``:
        a :class:`~safedenoiser.pipelines.profile.SafetyProfile` whose sets replace both, see :meth:`use_profile`)."""
        start = time.perf_counter()
        request = resolve(request, self.limits)
        if profile is not None:
            negation = self.use_profile(request, profile)
        negation = negation if negation is not None else self.shipped_negation()
        method = METHODS[request.method]
        per_run = request.steps if request.model == "fashion-t2i" else 2 * request.steps - 1
        needs_bank = method.bank and self._bank_key(request, negation) not in self._cache
        ticker = _Ticker(progress, per_run * (2 * request.count + (self.limits.bank if needs_bank else 0)))
        recorder = _Recorder()
        run = self._t2i if request.model == "fashion-t2i" else self._edm
        plain, safe, seconds = run(request, negation, recorder, ticker)
        judge = self.judge()
        names = judge.class_names
        plain_labels = [names[i] for i in judge.classify(plain).tolist()]
        safe_labels = [names[i] for i in judge.classify(safe).tolist()]
        info = {"source": negation.source, "items": len(negation), "content_hash": negation.content_hash}
        if negation.metadata.get("images"):
            info["images"] = negation.metadata["images"]
        seconds["total"] = round(time.perf_counter() - start, 2)
        return RunResult(request, plain, safe, plain_labels, safe_labels, recorder.rows, info, seconds)

    def use_profile(self, request: Request, profile: Any) -> NegationSet:
        """A safety profile on this page: the text-to-image model's conditional mode with the profile's negation and
        reference sets (the page's knob stays the gain); the profile must have been built for ``fashion-t2i``."""
        if request.model != "fashion-t2i" or request.method != "conditional":
            raise WebInputError("a safety profile applies to the text-to-image model with the conditional method")
        try:
            profile.check(self.model(request.model))
        except ValueError as err:
            raise WebInputError(str(err)) from None
        if profile.reference is None:
            raise WebInputError("this safety profile has no reference set (not a conditional-mode profile)")
        self._cache[("reference", profile.negation.content_hash)] = profile.reference
        return profile.negation

    def _bank_key(self, request: Request, negation: NegationSet) -> tuple:
        condition = request.prompt if request.model == "fashion-t2i" else request.class_name
        return ("bank", request.model, condition if request.model != "fashion-uncond" else None, request.guidance,
                request.steps, self.limits.bank, negation.content_hash, request.estimator)

    def _calibration(self, request: Request, negation: NegationSet, draw: Callable[[list[int]], Tensor],
                     ticker: _Ticker) -> Any:
        """The calibrated / substitution modes' bank: ``limits.bank`` model samples of this request's condition on
        seeds from ``bench.images.BANK_SEED`` (cached per model, condition, guidance, steps, negation set)."""
        def make() -> Any:
            ticker.phase = f"calibration bank ({self.limits.bank} model samples, once per setting)"
            bank = draw(list(range(BANK_SEED, BANK_SEED + self.limits.bank)))
            if request.estimator == "ratio":
                ticker.say("fitting the ratio classifiers on the bank (once per setting)")
            try:
                return calibrate(bank, negation, request.estimator)  # the ratio estimator fits its classifier here
            except ValueError as err:
                hint = (" (the request's own samples are all negated content, as for an explicit request; the "
                        "conditional mode handles those)") if "covered" in str(err) else ""
                raise WebInputError(f"cannot calibrate on this request: {err}{hint}") from None

        return self._cached(self._bank_key(request, negation), make)

    def _edm(self, request: Request, negation: NegationSet, recorder: _Recorder, ticker: _Ticker):
        """Unconditional / class-conditional EDM models: Heun on the EDM schedule (``zoo.images.common.generate``)."""
        model = self.model(request.model)
        conditional = request.model == "fashion-cond"
        label = FASHION_CLASSES.index(AVOIDED)
        cond = (lambda seeds: {"class_labels": torch.full((len(seeds),), FASHION_CLASSES.index(request.class_name))}) \
            if conditional else None
        base = ClassifierFreeGuidance(model, request.guidance) if conditional else model

        def draw(denoiser: Any, seeds: list[int]) -> Tensor:
            def counted(x: Tensor, sigma: Tensor, **kw: Any) -> Tensor:
                ticker.tick()
                return denoiser(x, sigma, **kw)

            ticker.weight = len(seeds)
            return generate(counted, seeds, request.steps, cond=cond, batch_size=max(1, len(seeds)), progress=False)

        seconds = {}
        t = time.perf_counter()
        ticker.phase = "plain"
        plain = draw(base, request.seeds)
        seconds["plain"] = round(time.perf_counter() - t, 2)
        sigmas = edm_sigmas(request.steps)
        windows = step_windows(sigmas)
        method, knob = request.method, request.knob
        t = time.perf_counter()
        if method == "negative":
            if conditional:
                denoiser = ClassifierFreeGuidance(model, knob, negative_labels=label)
            else:
                trouser_model = self.model("fashion-cond")
                denoiser = NegativeGuidance(model, lambda x, s: trouser_model(x, s, label), knob)
        else:
            calibration = None
            if METHODS[method].bank:
                calibration = self._calibration(request, negation, lambda seeds: draw(base, seeds), ticker)
            correction = self._correction(request, negation, recorder, calibration, windows,
                                          reference_sigma=float(sigmas[-2]))
            denoiser = SafeClassifierFreeGuidance(model, correction, request.guidance) if conditional else \
                CorrectedDenoiser(model, correction)
        ticker.phase = METHODS[method].label
        t_safe = time.perf_counter()
        safe = draw(denoiser, request.seeds)
        seconds["bank"] = round(t_safe - t, 2)
        seconds["safe"] = round(time.perf_counter() - t_safe, 2)
        return plain, safe, seconds

    def _correction(self, request: Request, negation: NegationSet, recorder: _Recorder, calibration: Any,
                    windows: dict[str, Window], reference_sigma: float) -> Correction:
        """The request's x0 correction as the catalogue builds it (``methods.registry``), with its window policy
        (paper / authors / SGF in the paper's critical window, substitution in the first half of the steps, as
        ``bench images``), the authors' threshold at ``reference_sigma`` and the request's concept and steer (the
        conditional mode on the text-to-image model: a flagged request is steered away from the concept's words)."""
        method = CATALOGUE[request.method]
        if not method.is_correction:
            raise WebInputError(f"{request.method} is not an x0 correction")
        concept = {"concept": request.concept, "steer": request.steer} if request.concept is not None else {}
        try:
            reference = self.reference(negation) if "reference" in method.needs else None
            inputs = MethodInputs(negation, windows, threshold_sigma=reference_sigma, calibration=calibration,
                                  reference=reference, callback=recorder)
            return method.correction(inputs, request.knob, **concept)
        except ValueError as err:  # a knob out of range, a reference set the negation set covers: named by the library
            raise WebInputError(str(err)) from None

    def _t2i(self, request: Request, negation: NegationSet, recorder: _Recorder, ticker: _Ticker):
        """The text-to-image pipeline through ``TextToImageBench.generate`` (hook, negative prompt, SLD, SAFREE)."""
        pipe = self.model("fashion-t2i")
        size = T2ISize(explicit=0, evasive=0, neutral=0, steps=request.steps, guidance=request.guidance, negation=0,
                       sweeps={}, batch_size=max(request.count, self.limits.bank))
        bench = TextToImageBench(pipe, self.judge(), {}, size, None, broken=None, progress=False)  # generates only

        def rows(seeds: list[int]) -> list[Any]:
            return [PromptRow(request.prompt, s, "web", "") for s in seeds]

        def draw(setting: Any, seeds: list[int]) -> Tensor:
            ticker.weight = len(seeds)
            handle = pipe.unet.register_forward_hook(ticker.tick)
            try:
                return bench.generate(setting, rows(seeds)).float()
            finally:
                handle.remove()

        seconds = {}
        t = time.perf_counter()
        ticker.phase = "plain"
        plain = draw(T2ISetting("plain", "-", None), request.seeds)
        seconds["plain"] = round(time.perf_counter() - t, 2)
        method, knob = request.method, request.knob
        t = time.perf_counter()
        if method == "negative":
            setting = T2ISetting(method, "guidance", knob, negative=True, guidance=knob)
        elif method == "sld":
            setting = T2ISetting(method, "guidance_scale", knob, sld=_checked(lambda: SLDConfig(
                guidance_scale=knob, concept=NEGATIVE_PROMPT)))
        elif method == "safree":
            setting = T2ISetting(method, "alpha", knob, safree=_checked(lambda: SafreeConfig(alpha=knob)))
        else:
            calibration = None
            if METHODS[method].bank:
                calibration = self._calibration(request, negation, lambda seeds: draw(
                    T2ISetting("plain", "-", None), seeds), ticker)
            windows = timestep_windows(lambda t: ve_sigma_at_timestep(pipe.scheduler, t))  # paper: t in [780, 1000]
            correction = self._correction(request, negation, recorder, calibration, windows, reference_sigma=0.01)
            setting = T2ISetting(method, METHODS[method].knob or "-", knob, make=lambda: correction)
        ticker.phase = METHODS[method].label
        t_safe = time.perf_counter()
        try:
            safe = draw(setting, request.seeds)
        except ValueError as err:  # e.g. the hook refusing a negation set of another pipeline, named by the library
            raise WebInputError(str(err)) from None
        seconds["bank"] = round(t_safe - t, 2)
        seconds["safe"] = round(time.perf_counter() - t_safe, 2)
        return plain, safe, seconds


def _checked(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except ValueError as err:
        raise WebInputError(str(err)) from None


# -- pictures and downloads ------------------------------------------------------------------------------------
def labelled_grid(images: Tensor, labels: Sequence[str], *, columns: int | None = None, scale: int = 4,
                  highlight: str = AVOIDED) -> Any:
    """A PIL mosaic of ``images`` (B, 1, H, W) in [-1, 1], each tile upscaled ``scale`` x (nearest) with the judge's
    label under it (``highlight`` in red)."""
    count = len(images)
    columns = columns or (4 if count <= 16 else 8)
    rows = -(-count // columns)
    pixels = to_uint8(images)
    tile, pad, caption = pixels.shape[-1] * scale, 4, 18
    canvas = Image.new("RGB", (columns * (tile + pad) + pad, rows * (tile + caption + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        font = ImageFont.load_default()
    for i in range(count):
        r, c = divmod(i, columns)
        left, top = pad + c * (tile + pad), pad + r * (tile + caption + pad)
        img = Image.fromarray(pixels[i, 0].numpy(), mode="L").resize((tile, tile), Image.NEAREST)
        canvas.paste(img.convert("RGB"), (left, top))
        text = labels[i] if i < len(labels) else ""
        draw.text((left + 2, top + tile + 2), text, fill=(200, 0, 0) if text == highlight else (40, 40, 40), font=font)
    return canvas


def diagnostics_figure(result: RunResult) -> Any:
    """Matplotlib figure: share of rows the correction changed and their mean weight, per model call, against the
    noise level sigma (decreasing to the right, as sampling goes)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax_active, ax_weight = fig.subplots(2, 1, sharex=True)
    rows = result.diagnostics
    method = METHODS[result.request.method]
    if not rows:
        reason = ("it changes the guidance, not the predicted x0" if not method.correction
                  else "the correction was never called")
        ax_active.text(0.5, 0.5, f"no correction diagnostics: {reason}", ha="center", va="center", wrap=True)
        ax_active.set_axis_off()
        ax_weight.set_axis_off()
        fig.suptitle(method.label, fontsize=10)
        return fig
    sigma = [max(r["sigma"], 1e-4) for r in rows]
    ax_active.plot(sigma, [100 * r["active"] for r in rows], "o-", markersize=3)
    ax_active.set_ylabel("corrected (%)")
    ax_active.set_ylim(-5, 105)
    weights = [r["weight"] for r in rows]
    ax_weight.plot(sigma, weights, "o-", markersize=3, color="tab:red")
    positive = [w for w in weights if w > 0]
    if positive and max(positive) / min(positive) > 100:
        ax_weight.set_yscale("log")
    ax_weight.set_ylabel("mean weight")
    ax_weight.set_xlabel("noise level sigma (VE), sampling runs left to right")
    ax_weight.set_xscale("log")
    ax_weight.invert_xaxis()
    for ax in (ax_active, ax_weight):
        ax.grid(alpha=0.3)
    fig.align_ylabels([ax_active, ax_weight])
    title = f"{method.label}, {method.knob} = {result.request.knob:g}" if method.knob else method.label
    fig.suptitle(f"Correction diagnostics: {title}", fontsize=10)
    fig.tight_layout()
    return fig


def write_downloads(result: RunResult, folder: str | Path) -> dict[str, Path]:
    """Write into ``folder``: ``grid_plain.png``, ``grid_safe.png``, ``diagnostics.png``, ``settings.json`` (the
    record) and ``images.zip`` (every image as PNG by seed, the grids, the plot and the record)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {"grid_plain": folder / "grid_plain.png", "grid_safe": folder / "grid_safe.png",
           "diagnostics": folder / "diagnostics.png", "record": folder / "settings.json", "zip": folder / "images.zip"}
    grids = {"grid_plain": labelled_grid(result.plain, result.plain_labels),
             "grid_safe": labelled_grid(result.safe, result.safe_labels)}
    for key, image in grids.items():
        fileio.write_with(out[key], lambda tmp, image=image: image.save(tmp, format="PNG"))
    figure = diagnostics_figure(result)
    save_figure(figure, out["diagnostics"])
    record = json.dumps(result.record(), indent=1, allow_nan=False, default=str)
    fileio.write_text(out["record"], record + "\n")

    def png(image: Tensor) -> bytes:
        buffer = io.BytesIO()
        pixels = to_uint8(image[0]).numpy()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
        return buffer.getvalue()

    def write_zip(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for kind, images in (("plain", result.plain), ("safe", result.safe)):
                for seed, image in zip(result.request.seeds, images):
                    archive.writestr(f"{kind}/seed_{seed:06d}.png", png(image))
            for key in ("grid_plain", "grid_safe", "diagnostics", "record"):
                archive.write(out[key], out[key].name)

    fileio.write_with(out["zip"], write_zip)
    return out
