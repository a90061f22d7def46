"""The one catalogue of methods: what each is called, its main knob, how it is built, its window policy, what it needs
and the values every benchmark sweeps. The CLI's ``--mode`` choices, the web page's method list and the image, text-to-
image and mixture benchmarks are built from :data:`CATALOGUE`; :data:`MODE_CLASSES` (derived from it) maps the modes that
:func:`make_correction` builds by name to their class.

Adding a method: write its class (a :class:`~safedenoiser.methods.base.Correction`), then add one :class:`Method` to
:data:`CATALOGUE` with a ``build`` that makes it from a :class:`MethodInputs` and its knobs (and ``cls`` to make it a
mode of :func:`make_correction` and ``generate --mode``), its ``window`` policy,
``needs`` and ``sweeps`` (per benchmark: ``images``, ``images-cond``, ``t2i``, ``t2i-quick``, ``toy``) and, to appear on
the web page, its ``web`` defaults. Methods that act on the guidance or the text (negative prompt, SLD, SAFREE) have no
``build``: each benchmark and the web page build them with the models only they hold, from the catalogue's knob and sweeps.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..negation import NegationSet
from .base import CorrectedDenoiser, Correction
from .baselines import SparseRepellency
from .conditional import ConditionalCorrection
from .safe import CalibratedCorrection, PaperCorrection, ReferenceCodeCorrection, SubstitutionCorrection
from .sgf import KernelRepulsion
from .window import Window

#: old names a user may still type (CLI, web, ``make_correction``, profiles already written) -> the mode's name.
#: ``reference`` was the authors' code's mode; it collided with the conditional mode's ``reference=`` set.
ALIASES = {"reference": "authors"}
INHERIT = "inherit"  # a sweep's window: the method's own policy


def mode_name(name: str) -> str:
    """The current name of mode / method ``name`` (an old alias is mapped to it; anything else is returned as is)."""
    return ALIASES.get(name, name)


def make_correction(negation: NegationSet, mode: str = "paper", **knobs: Any) -> Correction:
    """The correction of ``mode`` (a key of :data:`MODE_CLASSES` or an alias of :data:`ALIASES`) with its knobs;
    ``correction.config`` reads them back. ``conditional`` needs ``reference=ReferenceSet(...)``, ``calibrated`` /
    ``substitution`` a ``calibration``."""
    classes = mode_classes()
    mode = mode_name(mode)
    if mode not in classes:
        raise ValueError(f"unknown safe-denoiser mode {mode!r}; choose one of {tuple(classes)}")
    foreign = sorted(set(knobs) - accepted_knobs(classes[mode]))
    if foreign:
        owners = sorted(m for m, cls in classes.items() if set(foreign) <= accepted_knobs(cls))
        hint = f" (they belong to mode {', '.join(owners)})" if owners else ""
        raise ValueError(f"mode {mode!r} does not take {', '.join(foreign)}{hint}; its knobs: "
                         f"{', '.join(sorted(accepted_knobs(classes[mode])))}")
    return classes[mode](negation, **knobs)


def accepted_knobs(cls: type) -> set[str]:
    """Keyword arguments the constructor of ``cls`` accepts, following ``**kwargs`` up its base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names - {"self", "negation"}


def safe_denoiser(denoiser: Any, negation: NegationSet, mode: str = "paper", **knobs: Any) -> CorrectedDenoiser:
    """The transform Denoiser -> Denoiser: ``D_safe(x, sigma) = correction(x, sigma, D(x, sigma))``."""
    return CorrectedDenoiser(denoiser, make_correction(negation, mode, **knobs))


def authors_threshold(negation: NegationSet, sigma: float, **knobs: Any) -> float:
    """The authors' code's log threshold: from the negation set at noise level ``sigma`` (their last step)."""
    return make_correction(negation, "authors", **knobs).threshold_from_negation(sigma)


# -- the catalogue ---------------------------------------------------------------------------------------------
@dataclass
class MethodInputs:
    """What a consumer (benchmark, web page) hands a method's ``build``: the negation set, its windows by policy
    (None: no windows, every step), the noise level of the authors' threshold, and where needed the calibration
    (bank), the reference set of allowed items and a diagnostics callback."""

    negation: NegationSet
    windows: Mapping[str, Window] | None = None
    threshold_sigma: float = 0.01
    calibration: Any = None
    reference: Any = None
    callback: Callable[[dict[str, Any]], None] | None = None
    _thresholds: dict[tuple, float] = field(default_factory=dict, repr=False)

    def window(self, policy: str | None) -> Window | None:
        if policy is None or self.windows is None:
            return None
        if policy not in self.windows:
            raise ValueError(f"no window for policy {policy!r}; this run has {sorted(self.windows)}")
        return self.windows[policy]

    def authors_threshold(self, **knobs: Any) -> float:
        """:func:`authors_threshold` at ``threshold_sigma``, computed once per set of knobs."""
        key = tuple(sorted(knobs.items()))
        if key not in self._thresholds:
            self._thresholds[key] = authors_threshold(self.negation, self.threshold_sigma, **knobs)
        return self._thresholds[key]


@dataclass(frozen=True)
class Sweep:
    """Knob values one benchmark sweeps. ``key``: the sweep's name in the benchmark's sweep table (default: the method's
    ``row``), ``row``: the name its result rows carry (default: ``key``); ``knob``: the knob swept (default: the main
    one); ``window``: a policy other than the method's; ``knobs``: fixed extra knobs; ``unit="distance-quantile"``:
    the values are quantiles of the plain samples' distance to the negation set, which the benchmark turns into the
    knob; ``custom``: the benchmark builds these settings itself (they need what only it holds), the values live here."""

    values: tuple[Any, ...]
    key: str | None = None
    row: str | None = None
    knob: str | None = None
    window: str | None = INHERIT
    knobs: Mapping[str, Any] = field(default_factory=dict)
    unit: str | None = None
    custom: bool = False


@dataclass(frozen=True)
class Method:
    """One method. ``name``: what a user types (CLI, web, :func:`make_correction` for a mode); ``knob``: its main knob;
    ``build(inputs, **knobs)``: its x0 correction (None: it acts on guidance or text, built by each consumer);
    ``window``: policy (``paper``, ``half``, None: every step); ``needs``: ``bank`` (a calibration from the model's own
    samples), ``reference`` (a set of allowed items), ``negative`` (a denoiser or prompt of the negated content),
    ``text`` (a text-to-image pipeline); ``sweeps``: per benchmark; ``row``: the name benchmark rows carry (default:
    ``name``); ``label`` / ``help`` / ``web`` (default knob per model of the web page; empty: not on the page);
    ``cls``: the class :func:`make_correction` builds for ``name`` (a mode: also offered by ``generate --mode``, which
    draws a bank from the pipeline for the modes that need one, and stored by name in safety profiles)."""

    name: str
    knob: str | None
    build: Callable[..., Correction] | None = None
    cls: type[Correction] | None = None
    window: str | None = None
    needs: frozenset[str] = frozenset()
    sweeps: Mapping[str, tuple[Sweep, ...]] = field(default_factory=dict)
    row: str | None = None
    label: str = ""
    help: str = ""
    web: Mapping[str, float] = field(default_factory=dict)

    @property
    def row_name(self) -> str:
        return self.row or self.name

    @property
    def is_correction(self) -> bool:
        return self.build is not None

    def sweeps_of(self, benchmark: str) -> tuple[Sweep, ...]:
        return tuple(self.sweeps.get(benchmark, ()))

    def sweep_key(self, sweep: Sweep) -> str:
        return sweep.key or self.row_name

    def sweep_row(self, sweep: Sweep) -> str:
        return sweep.row or self.sweep_key(sweep)

    def sweep_knob(self, sweep: Sweep | None = None) -> str:
        return (sweep.knob if sweep is not None and sweep.knob else None) or self.knob or "-"

    def correction(self, inputs: MethodInputs, value: Any, sweep: Sweep | None = None, **knobs: Any) -> Correction:
        """This method's correction at main-knob (or ``sweep.knob``) ``value``, with the sweep's fixed knobs and
        window policy, the inputs' window and callback."""
        if self.build is None:
            raise ValueError(f"{self.name} is not an x0 correction (it acts on {', '.join(sorted(self.needs)) or 'guidance'})")
        policy = self.window if sweep is None or sweep.window == INHERIT else sweep.window
        fixed = dict(sweep.knobs) if sweep is not None else {}
        if self.knob is not None or (sweep is not None and sweep.knob):
            fixed[self.sweep_knob(sweep)] = value
        return self.build(inputs, window=inputs.window(policy), callback=inputs.callback, **fixed, **knobs)


def _every(value: float) -> dict[str, float]:
    return {"fashion-t2i": value, "fashion-cond": value, "fashion-uncond": value}


def _mode(mode: str, **needed: str) -> Callable[..., Correction]:
    """A registry mode's builder; ``needed`` maps knob names to the :class:`MethodInputs` field that supplies them."""
    def build(inputs: MethodInputs, **knobs: Any) -> Correction:
        return make_correction(inputs.negation, mode, **{k: getattr(inputs, f) for k, f in needed.items()}, **knobs)
    return build


def _authors(inputs: MethodInputs, **knobs: Any) -> Correction:
    return make_correction(inputs.negation, "authors", log_threshold=inputs.authors_threshold(), **knobs)


def _spell(inputs: MethodInputs, **knobs: Any) -> Correction:
    return SparseRepellency(inputs.negation, **knobs)


def _sgf(inputs: MethodInputs, **knobs: Any) -> Correction:
    return KernelRepulsion(inputs.negation, bandwidth="sample", **knobs)


S = Sweep
DQ = "distance-quantile"
#: every method, in the order the benchmarks run them and the web page lists them
CATALOGUE: dict[str, Method] = {m.name: m for m in [
    Method("conditional", "guard", _mode("conditional", reference="reference"), cls=ConditionalCorrection,
           needs=frozenset({"reference"}),
           sweeps={"images-cond": (S((1.0, 0.7, 0.0), custom=True),),  # through classifier-free guidance
                   "t2i": (S((1.0, 0.7, 0.0), knob="guard"),  # share of a flagged request's text direction replaced
                           S((1.0,), key="combined", knob="guard", custom=True),  # with the negative prompt / SLD
                           S((1.0, 3.0, 5.0), key="concept", knob="steer", custom=True),  # flagged rows steered
                           S((0.5, 1.0), key="multi", knob="guard", custom=True)),  # several concepts
                   "t2i-quick": (S((1.0,), knob="guard"), S((1.0,), key="multi", knob="guard", custom=True))},
           label="safe denoiser: conditional (one reference set)", web=_every(1.0),
           help="x0 + r (E_ref - E_unsafe), r from a per-request latch; guard = share of a flagged request's "
                "guidance direction dropped (1: all)"),
    Method("paper", "eta", _mode("paper"), cls=PaperCorrection, window="paper",
           sweeps={"images": (S((1.0, 1e100, 1e300)),), "images-cond": (S((1e300,)),),
                   # eta 1 .. 1e300 gave identical images before: the weight never acts in 784 dimensions
                   "t2i": (S((1e300,)),), "t2i-quick": (S((1e300,)),),
                   "toy": (S((1e-3, 1.0, 1e3, 1e6, 1e10, 1e15, 1e20, 1e30, 1e45, 1e60)),)},
           label="safe denoiser: paper weight (Eq. 7)", web=_every(1.0),
           help="x0 + eta beta (x0 - E_unsafe), beta the normalised Gaussian density; paper's window"),
    # rows keep the label ``reference`` of committed results
    Method("authors", "scale", _authors, cls=ReferenceCodeCorrection, window="paper", row="reference",
           sweeps={"images": (S((0.1, 0.3, 1.0, 3.0)),), "images-cond": (S((1.0,)),), "t2i": (S((0.3, 3.0)),),
                   "toy": (S((0.05, 0.1, 0.2, 0.5, 1.0, 2.0), custom=True),  # once per bandwidth below
                           # exp(-d / (2 s^2)) falls to 1/e at d = factor^2 * (median distance to the negation set)
                           S((0.5, 1.0, 2.0), key="reference_bandwidth", knob="bandwidth", custom=True))},
           label="safe denoiser: authors' code", web=_every(0.1),
           help="x0 - scale E_unsafe(x0), gated by the authors' threshold; paper's window"),
    Method("calibrated", "gain", _mode("calibrated", calibration="calibration"), cls=CalibratedCorrection,
           needs=frozenset({"bank"}),
           sweeps={"images": (S((1.0, 2.0, 4.0)), S((1.0, 2.0), key="calibrated-window", window="half")),
                   "images-cond": (S((1.0, 2.0)), S((1.0,), key="calibrated-window", window="half")),
                   "toy": (S((0.5, 1.0, 2.0, 3.0, 4.0, 8.0)),
                           S((1.0,), key="calibrated_ratio", row="calibrated (ratio)", custom=True))},
           label="safe denoiser: calibrated weight", web=_every(1.0),
           help="x0 + g beta* (x0 - E_unsafe), beta* from a bank of the model's own samples"),
    Method("substitution", "gain", _mode("substitution", calibration="calibration"), cls=SubstitutionCorrection,
           window="half", needs=frozenset({"bank"}),
           sweeps={"images": (S((1.0, 2.0, 4.0)),
                              S((1.0, 2.0, 4.0), key="substitution-all", window=None),  # every step
                              S((1.0, 2.0), key="substitution-floor", knobs={"floor": "share"}),
                              # every step, bank split by the fixed-point coverage cut (uncond)
                              S((1.0, 2.0), key="substitution-fixedcut", custom=True),
                              # the knobs select_knobs picks (uncond)
                              S((1,), key="default-rule", custom=True)),
                   "images-cond": (S((1.0, 4.0)), S((), key="substitution-all", window=None),
                                   S((), key="substitution-floor", knobs={"floor": "share"})),
                   "toy": (S((0.5, 1.0, 2.0, 4.0, 8.0, 16.0), window=None),
                           S((0.125, 0.25, 0.5, 1.0, 2.0, 4.0), key="substitution_floor", row="substitution (floor)",
                             window=None, knobs={"floor": "share"}),
                           S((1.0, 2.0, 4.0), key="substitution_ratio", row="substitution (ratio)", custom=True))},
           label="safe denoiser: bank substitution", web=_every(1.0),
           help="x0 + r (E_bank - E_unsafe), r = g beta*/(1 + g beta*); first half of the steps; "
                "needs a bank of the model's own samples (made once per setting)"),
    Method("spell", "radius", _spell,
           sweeps={"images": (S((0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3), unit=DQ),
                              # memorisation: multiples of the copy threshold (copies sit at ~0 distance, so the
                              # quantiles jump from the copies' distances straight to the other images')
                              S((0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0), key="spell_copy_threshold", custom=True)),
                   "images-cond": (S((0.05, 0.1), unit=DQ),),
                   "t2i": (S((0.05, 0.5), unit=DQ),),
                   # radii: quantiles of the bank's distance to the negation set, and fractions of the smallest
                   "toy": (S((0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5), unit=DQ, custom=True),
                           S((0.5, 0.7, 0.8, 0.9), key="spell_below", custom=True))},
           label="baseline: SPELL (sparse repellency)", web={"fashion-t2i": 7.5, "fashion-cond": 10.3, "fashion-uncond": 10.5},
           help="push x0 out of every ball of this radius (pixel distance) around a negation image"),
    Method("sgf", "scale", _sgf, window="paper", sweeps={"t2i": (S((0.03, 3.0)),)},
           label="baseline: SGF kernel repulsion", web=_every(0.03), help="x0 + c sum_m k_m (x0 - y_m); paper's window"),
    Method("negative", "weight", needs=frozenset({"negative"}),
           sweeps={"images": (S((0.5, 1.0, 2.0), custom=True), S((2.0,), key="negative-class", knob="guidance", custom=True)),
                   "images-cond": (S((1.5, 2.0, 3.0), key="negative-class", knob="guidance", custom=True),),
                   "t2i": (S((3.0, 7.5), key="negative-prompt", knob="guidance", custom=True),),  # CFG scale
                   "toy": (S((0.25, 0.5, 1.0, 2.0, 4.0, 8.0), key="negative_guidance", row="negative guidance",
                             custom=True),)},
           label="baseline: negative guidance / negative prompt", web={"fashion-t2i": 7.5, "fashion-cond": 2.0, "fashion-uncond": 1.0},
           help="unconditional: D + w (D - D_trouser) with the class-conditional model's trouser "
                "denoiser; class-conditional: CFG with weight w and the trouser class as the negative "
                "branch; text-to-image: CFG scale w with the negative prompt 'trousers, pants, jeans'"),
    Method("sld", "guidance_scale", needs=frozenset({"text"}),
           sweeps={"t2i": (S(("medium", "max"), knob="preset", custom=True),)},
           label="baseline: SLD (safe latent diffusion)", web={"fashion-t2i": 1000.0},
           help="SLD's safety guidance scale s_S (diffusers' medium preset otherwise), concept 'trousers, pants, jeans'"),
    Method("safree", "alpha", needs=frozenset({"text"}),
           # alpha: lower flags more tokens as triggers (0.01 .. -0.6 gave identical images before)
           sweeps={"t2i": (S((-0.6,), custom=True),)},
           label="baseline: SAFREE text side", web={"fashion-t2i": 0.01},
           help="SAFREE's token projection away from the trouser concepts; alpha as in the paper"),
]}


def method(name: str) -> Method:
    """The catalogue entry of ``name`` (an alias allowed); ValueError naming the choices otherwise."""
    entry = CATALOGUE.get(mode_name(name))
    if entry is None:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(CATALOGUE)}")
    return entry


def for_benchmark(benchmark: str) -> list[tuple[Method, Sweep]]:
    """Every (method, sweep) a benchmark runs, in catalogue order."""
    return [(m, s) for m in CATALOGUE.values() for s in m.sweeps_of(benchmark)]


def sweep_table(benchmark: str) -> dict[str, list[Any]]:
    """A benchmark's sweep table: sweep key -> knob values (what its sizes hold and a user may override)."""
    return {m.sweep_key(s): list(s.values) for m, s in for_benchmark(benchmark)}


def mode_classes() -> dict[str, type[Correction]]:
    """Mode name -> the class :func:`make_correction` builds: every catalogue entry with a ``cls``."""
    return {m.name: m.cls for m in CATALOGUE.values() if m.cls is not None}


def cli_modes() -> tuple[str, ...]:
    """The modes ``generate`` offers: every mode; those of :func:`bank_modes` draw their bank from the pipeline
    (``pipelines.bank``). ``profile build`` refuses the bank modes (a profile does not store a bank)."""
    return tuple(mode_classes())


def bank_modes() -> tuple[str, ...]:
    """The modes that calibrate on a bank of the model's own samples (``needs`` holds ``bank``)."""
    return tuple(name for name in mode_classes() if "bank" in CATALOGUE[name].needs)


MODE_CLASSES: dict[str, type[Correction]] = mode_classes()  # as the catalogue is at import (live: mode_classes())
MODES = tuple(MODE_CLASSES)
