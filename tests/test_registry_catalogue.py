"""The method catalogue (``methods/registry.py``) is the one list the CLI, the web page and the benchmarks are built from.

Behaviour check: ``tests/data/method_settings_before.json`` was written by ``python tests/test_registry_catalogue.py``
with the code as it was *before* the catalogue (each benchmark, the web page and the CLI had its own list). It holds,
for fixed small inputs, every setting the image benchmarks' ``method_settings``, ``bench.t2i.settings`` and
``bench.toy.method_runs`` produced (method, knob name, knob value and what its factory builds: correction class,
knobs, window), the web page's method table and the corrections it builds, and the ``generate --mode`` choices.
:func:`test_catalogue_builds_what_the_old_lists_built` describes the same things with today's code and compares.
The bank modes' callback changed from ``calibrated(mode, gain, window)`` (mode strings parsed by the benchmark) to
``calibrated(make)`` (a builder per calibration): :func:`_bank_mode` reads the old triple back from what ``make``
builds. The one intended difference is the rename of the mode ``reference`` (the authors' code) to ``authors`` where a user
types a name (web method, CLI mode); the benchmarks' row labels keep ``reference`` so that committed results still
match their tables. Changed since, on purpose, in the fixture: the conditional mode's main knob on the web page is
``guard`` (was ``gain``, which moved nothing: issue 19 item 2). Added since: the ``conditional+concept`` rows of
``bench t2i`` (issue 19, version 6), checked apart; the bank modes ``calibrated`` and ``substitution`` among the
``generate --mode`` choices (issue 24: ``generate`` draws their bank from the pipeline), checked apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

FIXTURE = Path(__file__).resolve().parent / "data" / "method_settings_before.json"
WEB_FIELDS = ("label", "knob", "default", "models", "correction", "bank", "help")
ADDED_T2I = ("conditional+concept",)  # bench t2i rows added after the catalogue (issue 19, version 6)
ADDED_CLI = ("calibrated", "substitution")  # generate --mode choices added after the catalogue (issue 24)
RENAMED = {"reference": "authors"}  # old user-facing mode name -> new one (the old one stays an alias)


# -- describing what a factory builds ----------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if hasattr(value, "content_hash"):
        return f"set:{value.content_hash[:12]}"
    if type(value).__name__ == "Calibration":  # its repr may grow; the share and bank size identify it here
        return f"Calibration(unsafe_share={value.unsafe_share:.6f}, safe={value.safe_bank.shape[0]})"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return repr(value)


def describe(obj: Any) -> Any:
    """What a setting's factory built, in plain values (correction class, its knobs and window)."""
    from safedenoiser.methods import CorrectedDenoiser, Correction, NegativeGuidance

    if isinstance(obj, CorrectedDenoiser):
        return {"corrected": describe(obj.correction)}
    if isinstance(obj, Correction):
        knobs = obj.KNOBS
        if type(obj).__name__ == "ConditionalCorrection":  # another helper prunes its other knobs: the ones set here
            knobs = [k for k in ("reference", "guard", "gain") if k in obj.KNOBS]
        return {"class": type(obj).__name__, "negation": _plain(obj.negation),
                **{k: _plain(getattr(obj, k)) for k in knobs},
                "window": [_plain(obj.window.sigma_min), _plain(obj.window.sigma_max)]}
    if isinstance(obj, NegativeGuidance):
        return {"class": "NegativeGuidance", "weight": obj.weight}
    if isinstance(obj, tuple) and obj and obj[0] == "calibrated":
        window = obj[3]
        return {"calibrated": obj[1], "gain": obj[2],
                "window": None if window is None else [_plain(window.sigma_min), _plain(window.sigma_max)]}
    return type(obj).__name__


# -- fixed small inputs ------------------------------------------------------------------------------------------
def _negation(shape=(1, 4, 4), n=40, seed=1):
    from safedenoiser import NegationSet

    return NegationSet(torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)), space="pixels")


def _reference(shape=(1, 4, 4)):
    from safedenoiser.methods import ReferenceSet

    return ReferenceSet(torch.randn(30, *shape, generator=torch.Generator().manual_seed(3)) + 3, space="pixels")


def _calibration(dim=16):
    from safedenoiser.methods import Calibration

    return Calibration(torch.randn(30, dim, generator=torch.Generator().manual_seed(2)), 0.25)


def _base(x, sigma, **cond):
    return x


def images_settings() -> dict[str, Any]:
    from safedenoiser.bench import images as benchmarks
    from safedenoiser.zoo.images.common import edm_sigmas
    from safedenoiser.methods import Calibration

    negation = _negation()
    plain = torch.randn(24, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    sizes = {"default": benchmarks.SIZES["default"], "quick": benchmarks.SIZES["quick"],
             "cond": dataclasses.replace(benchmarks.SIZES["default"], sweeps=benchmarks.COND_SWEEPS)}
    bank = Calibration.from_bank(torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(6)) + torch.arange(60.0).view(60, 1, 1, 1) % 2 * 4, negation)
    out = {}
    for name, size in sizes.items():
        settings = benchmarks.method_settings(_base, negation, size, plain, lambda make: ("bank", make(bank)),
                                              edm_sigmas(size.steps))
        out[name] = [[s.method, s.knob, _plain(s.value), _bank_mode(s.method, s.make())] for s in settings]
    return out


def _bank_mode(name: str, built: Any) -> Any:
    """The old ``calibrated(mode, gain, window)`` callback's arguments, read from what the bank builder makes:
    ``substitution*`` keys were bank substitution (``substitution-floor`` with ``floor="share"``), the others the
    calibrated mode; no window was passed as None."""
    from safedenoiser.methods import CalibratedCorrection, SubstitutionCorrection, Window

    if not (isinstance(built, tuple) and built[0] == "bank"):
        return describe(built)
    correction = built[1]
    substitution = name.startswith("substitution")
    assert type(correction) is (SubstitutionCorrection if substitution else CalibratedCorrection), name
    if substitution:
        assert correction.floor == ("share" if name == "substitution-floor" else None), name
    window = None if correction.window == Window() else correction.window
    return describe(("calibrated", name, correction.gain, window))


def t2i_settings() -> dict[str, Any]:
    from safedenoiser.models.adapters import scaled_linear_alphas_cumprod
    from safedenoiser.bench import t2i as bench

    pipe = SimpleNamespace(scheduler=SimpleNamespace(alphas_cumprod=scaled_linear_alphas_cumprod(1000)))
    sets = bench.BenchSets(_negation(), _reference(), "test")
    plain = torch.randn(24, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    out = {}
    for name in ("default", "quick"):
        rows = []
        for s in bench.settings(bench.SIZES[name], sets, plain, pipe):
            rows.append([s.method, s.knob, _plain(s.value), None if s.make is None else describe(s.make()),
                         s.negative, s.guidance, s.negative_text, _plain(s.sld), _plain(s.safree)])
        out[name] = rows
    return out


def toy_runs() -> list[Any]:
    from safedenoiser.bench import toy

    cfg = toy.ToyConfig(dims=(2,), samples=20, negation=30, bank=40, steps=4)
    problem = toy.build_problem(2, cfg)
    problem = dataclasses.replace(problem, ratio=problem.calibration)  # the fitted-ratio rows without the fit
    rules = {"calibrated": {"gain": 2.0}, "substitution (ratio)": {"gain": 1.0, "floor": "share"}}
    runs = toy.method_runs(problem, cfg, rules)
    return [[s.method, s.knob, _plain(s.value), describe(s.make(toy.EvaluationCounter()))] for s in runs]


def web_methods() -> dict[str, Any]:
    from safedenoiser.methods import Window
    from safedenoiser.web import generation

    engine = generation.Engine()
    engine.reference = lambda negation: _reference()
    negation = _negation()
    windows = {"paper": Window(0.5, 80.0), "half": Window(2.0, 80.0)}
    out = {}
    for name, method in generation.METHODS.items():
        row = {k: _plain(getattr(method, k)) for k in WEB_FIELDS}
        if method.correction:
            request = generation.Request(model="fashion-uncond", method=name, knob=method.default["fashion-uncond"])
            row["built"] = describe(engine._correction(request, negation, None, _calibration(), windows, 0.01))
        out[name] = row
    return out


def cli_modes() -> list[str]:
    from safedenoiser.pipelines import generate_command

    return list(generate_command.mode_choices())  # the code before the catalogue had a tuple, MODES


def snapshot() -> dict[str, Any]:
    return {"images": images_settings(), "t2i": t2i_settings(), "toy": toy_runs(), "web": web_methods(),
            "cli_modes": cli_modes()}


def _normalise(data: Any) -> Any:
    return json.loads(json.dumps(data))


# -- tests -------------------------------------------------------------------------------------------------------
def test_catalogue_builds_what_the_old_lists_built():
    pytest.importorskip("diffusers")
    before = json.loads(FIXTURE.read_text())
    now = _normalise(snapshot())
    before["web"] = {RENAMED.get(k, k): v for k, v in before["web"].items()}
    before["cli_modes"] = [RENAMED.get(m, m) for m in before["cli_modes"]]
    added = [row for rows in now["t2i"].values() for row in rows if row[0] in ADDED_T2I]
    assert sorted(row[2] for row in added) == [1.0, 3.0, 5.0]  # the concept sweep is there ...
    now["t2i"] = {k: [row for row in rows if row[0] not in ADDED_T2I] for k, rows in now["t2i"].items()}  # ... and new
    assert [m for m in now["cli_modes"] if m in ADDED_CLI] == list(ADDED_CLI)  # the bank modes are offered ...
    now["cli_modes"] = [m for m in now["cli_modes"] if m not in ADDED_CLI]  # ... after the modes offered before
    for part in ("images", "t2i", "toy", "web", "cli_modes"):
        assert now[part] == before[part], part



def _dummy_entry():
    from safedenoiser.methods import Correction, Proposal
    from safedenoiser.methods.registry import Method, Sweep

    class ShrinkCorrection(Correction):
        """x0 <- (1 - strength) x0 everywhere in its window (a dummy for the catalogue test)."""

        KNOBS = ("strength",)

        def __init__(self, negation, strength: float = 0.5, **kwargs):
            super().__init__(negation, **kwargs)
            self.strength = strength

        def propose(self, x, sigma, x0):
            return Proposal(x0 * (1 - self.strength), torch.ones(len(x0), dtype=torch.bool), {})

    entry = Method("shrink", "strength", lambda inputs, **knobs: ShrinkCorrection(inputs.negation, **knobs),
                   cls=ShrinkCorrection, window="paper", label="dummy: shrink", help="x0 <- (1 - s) x0",
                   web={"fashion-uncond": 0.25},
                   sweeps={"images": (Sweep((0.1, 0.2)),), "t2i": (Sweep((0.3,)),), "toy": (Sweep((0.4, 0.5)),)})
    return entry, ShrinkCorrection


def test_one_catalogue_entry_reaches_the_cli_the_web_page_and_every_benchmark(monkeypatch):
    """One class and one catalogue entry: ``generate --mode``, ``make_correction``, the web page's list and its
    correction, and the settings of the image, text-to-image and mixture benchmarks all pick the method up."""
    pytest.importorskip("diffusers")
    from safedenoiser.bench import toy
    from safedenoiser.bench import images as benchmarks
    from safedenoiser.zoo.images.common import edm_sigmas
    from safedenoiser.methods import CorrectedDenoiser, Window, make_correction, registry
    from safedenoiser.models.adapters import scaled_linear_alphas_cumprod
    from safedenoiser.pipelines.generate_command import mode_choice, mode_choices
    from safedenoiser.bench import t2i as bench
    from safedenoiser.web import generation

    entry, cls = _dummy_entry()
    monkeypatch.setitem(registry.CATALOGUE, "shrink", entry)
    negation = _negation()

    assert "shrink" in mode_choices() and mode_choice("shrink") == "shrink"
    assert type(make_correction(negation, "shrink", strength=0.3)) is cls

    methods = generation.web_methods()
    assert methods["shrink"].knob == "strength" and methods["shrink"].models == ("fashion-uncond",)
    request = generation.Request(model="fashion-uncond", method="shrink", knob=0.25)
    built = generation.Engine()._correction(request, negation, None, None, {"paper": Window(0.5, 80.0)}, 0.01)
    assert type(built) is cls and built.strength == 0.25 and built.window == Window(0.5, 80.0)

    plain = torch.randn(24, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    size = dataclasses.replace(benchmarks.SIZES["quick"], sweeps=registry.sweep_table("images"))
    sigmas = edm_sigmas(size.steps)
    images = [s for s in benchmarks.method_settings(_base, negation, size, plain, None, sigmas) if s.method == "shrink"]
    assert [(s.knob, s.value) for s in images] == [("strength", 0.1), ("strength", 0.2)]
    made = images[0].make()
    assert isinstance(made, CorrectedDenoiser) and type(made.correction) is cls
    assert made.correction.window == Window.from_step_fractions(sigmas, 0.0, 0.22)  # the paper's window policy

    pipe = SimpleNamespace(scheduler=SimpleNamespace(alphas_cumprod=scaled_linear_alphas_cumprod(1000)))
    t2i_size = dataclasses.replace(bench.SIZES["quick"], sweeps=registry.sweep_table("t2i"))
    t2i = [s for s in bench.settings(t2i_size, bench.BenchSets(negation, _reference(), "test"), plain, pipe)
           if s.method == "shrink"]
    assert [(s.knob, s.value) for s in t2i] == [("strength", 0.3)] and type(t2i[0].make()) is cls

    cfg = toy.ToyConfig(dims=(2,), samples=20, negation=30, bank=40, steps=4)
    runs = [r for r in toy.method_runs(toy.build_problem(2, cfg), cfg) if r.method == "shrink"]
    assert [(r.knob, r.value) for r in runs] == [("strength", 0.4), ("strength", 0.5)]
    assert type(runs[0].make(toy.EvaluationCounter()).correction) is cls


def test_old_mode_name_is_an_alias_everywhere():
    """``reference`` (the authors' code's old name) still works where a user types it."""
    from safedenoiser.methods import ReferenceCodeCorrection, make_correction
    from safedenoiser.pipelines.generate_command import mode_choice
    from safedenoiser.web import generation

    assert type(make_correction(_negation(), "reference", scale=0.2)) is ReferenceCodeCorrection
    assert mode_choice("reference") == "reference"  # kept as typed: records and profiles read as before the rename
    assert generation.resolve(generation.Request(model="fashion-uncond", method="reference")).method == "authors"
    with pytest.raises(Exception, match="invalid choice: 'nope'.*conditional, paper, authors"):
        mode_choice("nope")


if __name__ == "__main__":
    torch.set_num_threads(1)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(_normalise(snapshot()), indent=1) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
