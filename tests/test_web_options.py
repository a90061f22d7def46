"""The page's per-method options beside the main knob (no browser): the beta* estimator of the bank methods (issue 24)
and the conditional mode's concept and steer on the text-to-image model (issue 19, version 6)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from safedenoiser.methods.ratio import RatioCalibration, RatioFit, calibrate
from safedenoiser.web import generation
from safedenoiser.web.generation import AVOIDED, Engine, Limits, Request, WebInputError, resolve
from test_web import shared_engine

CONCEPT = "trousers, pants, jeans"
FAST = RatioFit(steps=40, batch=32, hidden=32)  # a small fit: the engine's code path, seconds instead of a minute


def _capture(engine: Engine, monkeypatch) -> list:
    """The corrections ``engine`` builds from now on (its ``_correction``, unchanged)."""
    built, original = [], engine._correction
    monkeypatch.setattr(engine, "_correction", lambda *a, **k: built.append(original(*a, **k)) or built[-1])
    return built


def test_the_ratio_estimator_calibrates_the_bank_methods(monkeypatch):
    """estimator="ratio" on the substitution mode: the correction's calibration is the fitted classifiers' (a
    RatioCalibration of the ratio fit), the kernel one a kNN Calibration; same plain images, other safe images."""
    fits = []

    def small_fit(bank, negation, estimator):
        fits.append(estimator)
        return calibrate(bank, negation, estimator, **({"fit": FAST} if estimator == "ratio" else {}))

    monkeypatch.setattr(generation, "calibrate", small_fit)
    torch.set_num_threads(1)
    engine = Engine(Limits(bank=16))
    built = _capture(engine, monkeypatch)
    runs = {est: engine.run(Request(model="fashion-uncond", method="substitution", estimator=est, count=2, steps=6))
            for est in ("kernel", "ratio")}
    kernel, ratio = (c.calibration for c in built)
    assert fits == ["kernel", "ratio"]
    assert type(kernel) is not RatioCalibration and kernel.cut != "ratio"
    assert isinstance(ratio, RatioCalibration) and ratio.ratio.fit == FAST
    assert torch.equal(runs["kernel"].plain, runs["ratio"].plain)
    assert not torch.equal(runs["kernel"].safe, runs["ratio"].safe)
    assert runs["ratio"].record()["request"]["estimator"] == "ratio"


def test_a_concept_steers_the_flagged_rows_of_the_conditional_mode(monkeypatch):
    """On the shipped text-to-image model, "a shirt and trousers" is flagged: with a concept the conditional mode gets
    concept and steer and its images change (plain ones do not); the status line names the concept."""
    engine = shared_engine()
    built = _capture(engine, monkeypatch)
    base = Request(model="fashion-t2i", prompt="a shirt and trousers", method="conditional", count=3, steps=5)
    off = engine.run(base)
    on = engine.run(Request(**{**base.__dict__, "concept": f"  {CONCEPT} ", "steer": 1.5}))
    assert built[0].concept is None
    assert built[1].concept == CONCEPT and built[1].steer == 1.5
    assert torch.equal(off.plain, on.plain) and off.plain_labels.count(AVOIDED) == 3
    assert not torch.equal(off.safe, on.safe)
    assert f"concept '{CONCEPT}', steer 1.5" in on.summary()
    assert on.record()["request"]["concept"] == CONCEPT


@pytest.mark.parametrize("change, expected", [
    ({"model": "fashion-cond", "concept": "trousers"},
     "a concept is for the conditional method on the text-to-image model \\(fashion-t2i\\), not conditional on fashion-cond"),
    ({"method": "paper", "concept": "trousers"}, "a concept is for the conditional method .* not paper on fashion-t2i"),
    ({"concept": "trousers", "steer": -1}, "steer must be >= 0"),
    ({"concept": "trousers", "steer": float("nan")}, "steer must be a finite number"),
    ({"concept": "trousers", "steer": "lots"}, "steer must be a number, got 'lots'"),
    ({"steer": 3}, "steer 3 needs a concept"),
    ({"concept": "x" * 201}, "the concept has 201 characters; at most 200"),
    ({"method": "conditional", "estimator": "ratio"}, "estimator is for the methods that calibrate on a bank"),
])
def test_bad_options_are_refused_by_name(change, expected):
    with pytest.raises(WebInputError, match=expected):
        resolve(Request(**change))


def test_options_are_normalised():
    request = resolve(Request(concept="  trousers \n pants ", steer=None))
    assert request.concept == "trousers pants" and request.steer == 1.0
    assert resolve(Request(concept="   ")).concept is None  # empty: off
    assert resolve(Request(model="fashion-uncond", method="calibrated", estimator="ratio")).estimator == "ratio"


@pytest.mark.filterwarnings("ignore:stop here:UserWarning", "ignore:steer must:UserWarning")  # the page's pop-ups
def test_the_page_shows_and_sends_each_option_only_where_it_applies():
    pytest.importorskip("gradio", reason="the page needs the 'web' extra (gradio)")
    from safedenoiser.web.app import Page, build_app, method_options

    def shown(model, method):
        return tuple(update["visible"] for update in method_options(model, method))

    assert shown("fashion-t2i", "conditional") == (False, True, True)
    assert shown("fashion-cond", "conditional") == (False, False, False)
    assert shown("fashion-uncond", "substitution") == shown("fashion-t2i", "calibrated") == (True, False, False)
    assert shown("fashion-t2i", "sld") == (False, False, False)
    app = build_app(shared_engine())
    ids = {getattr(block, "elem_id", None): block for block in app.blocks.values()}
    assert [value for _, value in ids["estimator"].choices] == ["kernel", "ratio"] and ids["estimator"].value == "kernel"
    assert ids["concept"].value == "" and ids["steer"].value == 1.0
    app.safedenoiser_page.close()

    seen = []

    class Engine:
        limits = Limits()

        def run(self, request, negation, progress, profile=None):
            seen.append(resolve(request))
            raise WebInputError("stop here")

    page = Page(Engine())
    quiet = {"progress": lambda *a, **k: None}
    common = (AVOIDED, 3.0, 0, 2, 4, "shipped", None)
    page.generate("fashion-t2i", "trousers", *common, "conditional", 1.0, "ratio", CONCEPT, 2.0, **quiet)
    page.generate("fashion-t2i", "trousers", *common, "paper", 1.0, "ratio", CONCEPT, 2.0, **quiet)
    page.generate("fashion-uncond", "", *common, "substitution", 1.0, "ratio", CONCEPT, 2.0, **quiet)
    assert [(r.method, r.estimator, r.concept, r.steer) for r in seen] == [
        ("conditional", "kernel", CONCEPT, 2.0), ("paper", "kernel", None, 1.0), ("substitution", "ratio", None, 1.0)]
    status = page.generate("fashion-t2i", "trousers", *common, "conditional", 1.0, "kernel", CONCEPT, -2, **quiet)[0]
    assert status.startswith("**Not generated:** steer must be >= 0") and len(seen) == 3
    page.close()


def test_a_calibration_error_names_its_cause_and_hints_only_at_coverage(monkeypatch):
    """The bank modes' calibration errors reach the page in one line; the hint about explicit requests (every bank
    sample covered) is added only when that is the error, not to a failing ratio fit."""
    engine = Engine.__new__(Engine)
    engine._cached = lambda key, make: make()
    engine._bank_key = lambda request, negation: None
    engine.limits = SimpleNamespace(bank=4)
    ticker = SimpleNamespace(phase="", say=lambda text: None)
    request = SimpleNamespace(estimator="ratio")
    for message, hinted in (("every bank sample is covered by the negation set: nothing is left", True),
                            ("ratio fit: lr must be > 0, got 0", False)):
        monkeypatch.setattr(generation, "calibrate", lambda *a, m=message: (_ for _ in ()).throw(ValueError(m)))
        with pytest.raises(WebInputError) as info:
            engine._calibration(request, None, lambda seeds: None, ticker)
        assert message in str(info.value) and ("explicit request" in str(info.value)) == hinted
