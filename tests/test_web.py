"""``safe-denoiser serve``'s work as plain functions (no browser): plain vs safe on the same seeds, uploads, limits,
downloads. The browser tests are in test_web_browser.py."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import zipfile

import pytest
import torch

from safedenoiser.web.generation import (AVOIDED, METHODS, Engine, Limits, Request, WebInputError, negation_from_uploads,
                                         resolve, write_downloads)


@functools.lru_cache(maxsize=None)
def shared_engine() -> Engine:
    """One engine for the web tests of this process (test_web_browser.py serves it), so models load once."""
    torch.set_num_threads(1)  # as `serve`: on a shared, loaded CPU two OpenMP threads are far slower than one
    return Engine()


@pytest.fixture(scope="module")
def engine():
    return shared_engine()


def test_plain_grid_is_the_model_and_the_safe_grid_moves(engine):
    """The left grid is the shipped model's own sampler output, bit for bit; SPELL with a wide radius changes the
    right grid on the same seeds and reports where it acted."""
    from safedenoiser.zoo.images.common import generate

    request = Request(model="fashion-uncond", method="spell", knob=12.0, count=6, steps=4, seed=3)
    seen = []
    result = engine.run(request, progress=lambda fraction, phase: seen.append(fraction))
    expected = generate(engine.model("fashion-uncond"), list(range(3, 9)), 4, progress=False)
    assert torch.equal(result.plain, expected)
    assert result.safe.shape == result.plain.shape
    assert not torch.equal(result.safe, result.plain)
    assert len(result.plain_labels) == len(result.safe_labels) == 6
    assert len(result.diagnostics) == 7  # Heun, 4 steps: 7 denoiser calls
    assert any(row["active"] > 0 and row["weight"] > 0 for row in result.diagnostics)
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)


def test_t2i_conditional_mode_removes_trousers_of_an_evasive_prompt(engine):
    """'khakis' (no trouser word): the plain pipeline draws trousers; the conditional mode on the same seeds does not.
    The plain images equal a direct call of the pipeline (same seeds, no hook)."""
    request = Request(model="fashion-t2i", prompt="khakis", method="conditional", count=4, steps=6, seed=0)
    result = engine.run(request)
    pipe = engine.model("fashion-t2i")
    direct = pipe(["khakis"] * 4, num_inference_steps=6, guidance_scale=3.0, output_type="pt",
                  generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
    assert torch.equal(result.plain, direct)
    plain, safe = result.share(result.plain_labels), result.share(result.safe_labels)
    assert plain >= 0.75 and safe < plain, (result.plain_labels, result.safe_labels)
    assert any(row["active"] > 0 for row in result.diagnostics)
    record = result.record()
    assert record["seeds"] == [0, 1, 2, 3] and record["method"]["value"] == METHODS["conditional"].default["fashion-t2i"]
    assert record[f"{AVOIDED}_share"] == {"plain": plain, "safe": safe}


def test_downloads_hold_every_image_and_the_record(engine, tmp_path):
    result = engine.run(Request(model="fashion-uncond", method="paper", count=2, steps=2, seed=5))
    files = write_downloads(result, tmp_path / "run")
    record = json.loads(files["record"].read_text())
    assert record["request"]["model"] == "fashion-uncond" and record["seeds"] == [5, 6]
    assert record["labels"]["plain"] == result.plain_labels
    with zipfile.ZipFile(files["zip"]) as archive:
        names = set(archive.namelist())
    assert {"plain/seed_000005.png", "safe/seed_000006.png", "grid_plain.png", "grid_safe.png", "diagnostics.png",
            "settings.json"} <= names


def _png(path, size, mode="L"):
    from PIL import Image

    Image.new(mode, size, 128).save(path)
    return path


def test_uploads_are_encoded_like_negation_build(tmp_path):
    """Two images of other sizes and colours -> a (2, 1, 28, 28) pixel set in [-1, 1], as negation build makes it."""
    limits = Limits(max_uploads=3, max_upload_bytes=50_000, max_upload_side=256)
    negation = negation_from_uploads([_png(tmp_path / "a.png", (28, 28)), _png(tmp_path / "b.png", (60, 40), "RGB")],
                                     limits)
    assert negation.item_shape == (1, 28, 28) and len(negation) == 2
    assert negation.space == "pixels" and float(negation.data.abs().max()) <= 1.0
    assert "2 uploaded images (a.png, b.png)" in negation.source


@pytest.mark.parametrize("case, expected", [
    ("text", "cannot read image notes.png"),
    ("count", "4 files uploaded; at most 3"),
    ("bytes", "big.bmp is 0.2 MB; at most 0.1 MB per file"),
    ("pixels", "wide.png is 300x10 pixels; at most 256x256"),
    ("none", "no negation images uploaded"),
])
def test_bad_uploads_are_refused_by_name(tmp_path, case, expected):
    limits = Limits(max_uploads=3, max_upload_bytes=50_000, max_upload_side=256)
    good = _png(tmp_path / "good.png", (28, 28))
    if case == "text":
        bad = tmp_path / "notes.png"
        bad.write_text("this is a text file, not an image")
        files = [good, bad]
    elif case == "count":
        files = [_png(tmp_path / f"{i}.png", (28, 28)) for i in range(4)]
    elif case == "bytes":
        files = [_png(tmp_path / "big.bmp", (256, 256), "RGB")]
    elif case == "pixels":
        files = [_png(tmp_path / "wide.png", (300, 10))]
    else:
        files = []
    with pytest.raises(WebInputError) as err:
        negation_from_uploads(files, limits)
    assert expected in str(err.value)
    assert str(tmp_path) not in str(err.value)  # the page shows file names, not server paths


@pytest.mark.parametrize("change, expected", [
    ({"count": 17}, "number of images must be between 1 and 16"),
    ({"steps": 0}, "steps must be between 1 and 20"),
    ({"seed": -1}, "first seed must be between 0"),
    ({"count": 2.5}, "number of images must be a whole number"),
    ({"method": "sld", "model": "fashion-uncond"}, "sld works with fashion-t2i only"),
    ({"method": "magic"}, "unknown method 'magic'"),
    ({"knob": float("nan")}, "guard must be a finite number"),
    ({"prompt": "   "}, "needs a prompt"),
    ({"model": "fashion-cond", "class_name": "hat"}, "unknown class 'hat'"),
])
def test_requests_out_of_limits_are_refused_by_name(change, expected):
    with pytest.raises(WebInputError, match=expected):
        resolve(Request(**change), Limits(max_images=16, max_steps=20))


def test_defaults_are_filled_from_the_method_and_model():
    request = resolve(Request(model="fashion-cond", method="spell"))
    assert request.knob == METHODS["spell"].default["fashion-cond"] and request.guidance == 2.0
    assert request.seeds == list(range(8))


def test_library_errors_reach_the_page_as_one_line(engine):
    with pytest.raises(WebInputError, match="radius must be a finite number >= 0"):
        engine.run(Request(model="fashion-uncond", method="spell", knob=-1.0, count=1, steps=1))


def test_cli_help_does_not_import_gradio():
    code = ("import sys; from safedenoiser.cli import build_parser; p = build_parser(); "
            "p.parse_args(['serve', '--port', '8000']); assert 'gradio' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_changing_the_model_offers_its_methods_and_their_defaults():
    pytest.importorskip("gradio", reason="the page needs the 'web' extra (gradio)")
    from safedenoiser.web.app import knob_update, on_model

    prompt, class_name, guidance, method, knob, _ = on_model("fashion-cond", "sld")
    assert not prompt["visible"] and class_name["visible"] and guidance["value"] == 2.0
    assert method["value"] == "conditional" and "sld" not in [value for _, value in method["choices"]]
    knob, _ = knob_update("fashion-uncond", "spell")
    assert knob["value"] == 10.5 and knob["label"].startswith("radius")


def test_the_page_queues_requests_one_at_a_time():
    pytest.importorskip("gradio", reason="the page needs the 'web' extra (gradio)")
    from safedenoiser.web.app import build_app

    app = build_app(shared_engine())
    assert app._queue.default_concurrency_limit == 1 and app._queue.max_size == 32
    assert app.analytics_enabled is False


def test_a_served_safety_profile_is_a_negation_choice_and_reaches_the_engine():
    """``serve --safety PROFILE``: the page offers the profile (selected by default) and passes it to the engine."""
    pytest.importorskip("gradio", reason="the page needs the 'web' extra (gradio)")
    from types import SimpleNamespace

    from safedenoiser.web.app import Page, build_app
    from safedenoiser.web.generation import PROFILE_NEGATION

    profile = SimpleNamespace(negation=SimpleNamespace(source="500 trousers"))
    app = build_app(shared_engine(), profile)
    radios = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "negation"]
    assert radios and radios[0].value == PROFILE_NEGATION
    assert any(value == PROFILE_NEGATION for _, value in radios[0].choices)
    seen = {}

    class Engine:
        limits = Limits()

        def run(self, request, negation, progress, profile=None):
            seen["profile"] = profile
            raise WebInputError("stop here")

    page = Page(Engine(), profile)
    status = page.generate("fashion-t2i", "trousers", AVOIDED, 3.0, 0, 2, 4, PROFILE_NEGATION, None, "conditional",
                           1.0, progress=lambda *a, **k: None)[0]
    assert seen["profile"] is profile and "stop here" in status
    page.generate("fashion-t2i", "trousers", AVOIDED, 3.0, 0, 2, 4, "shipped", None, "conditional", 1.0,
                  progress=lambda *a, **k: None)
    assert seen["profile"] is None
    page.close()
