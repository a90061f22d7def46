"""``safe-denoiser generate``: defaults that act (conditional mode, derived reference set), flags refused by mode, errors
before slow work, a summary line and a grid, an atomic settings check and records that survive a kill (issue 20,
items 1, 4, 5, 6; issue 25, items 5 and 8); safety profiles (issue 20, item 2): negation set + reference set + knobs in
one folder, save / load, one call from Python, ``profile build`` and ``generate --safety``, the web engine, and the
pipeline it was built for checked when attached."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import reliability_table  # noqa: E402
from tiny_pipelines import IMAGE_SIZE, LATENT_CHANNELS, tiny_sd  # noqa: E402

from safedenoiser import NegationSet  # noqa: E402
from safedenoiser.argtypes import idle_cores, resolve_threads  # noqa: E402
from safedenoiser.cli import main  # noqa: E402
from safedenoiser.methods import ReferenceSet  # noqa: E402
from safedenoiser.pipelines import attach_safe_denoiser  # noqa: E402
from safedenoiser.pipelines.generate import PromptItem, check_settings, generate, read_prompts  # noqa: E402
from safedenoiser.pipelines.profile import CONFIG_NAME, SafetyProfile, SafetyProfileError, attach_profile  # noqa: E402

LATENT = (LATENT_CHANNELS, IMAGE_SIZE // 2, IMAGE_SIZE // 2)


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    reliability_table.flush()


@pytest.fixture
def files(tmp_path):
    generator = torch.Generator().manual_seed(0)
    # far from the tiny pipeline's samples: none of them is covered, so the derived reference keeps them all
    NegationSet(5 + 0.1 * torch.randn(10, *LATENT, generator=generator)).save(tmp_path / "neg.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na house\n")
    return tmp_path / "neg.safetensors", prompts


def _argv(model, prompts, out, *extra):
    return ["generate", "--model", str(model), "--prompts", str(prompts), "--out", str(out), "--steps", "2",
            "--height", str(IMAGE_SIZE), "--width", str(IMAGE_SIZE), "--threads", "1", *map(str, extra)]


def test_negation_alone_runs_the_conditional_mode_with_a_derived_cached_reference(model_dir, files, tmp_path, capsys,
                                                                                   one_thread):
    neg, prompts = files
    assert main(_argv(model_dir, prompts, tmp_path / "a", "--negation", neg)) == 0
    printed = capsys.readouterr().out
    cached = list(tmp_path.glob("neg.reference-*.safetensors"))
    assert "derived a reference set" in printed and len(cached) == 1 and str(cached[0]) in printed
    reference = NegationSet.load(cached[0])
    assert reference.metadata["role"] == "reference" and reference.metadata["derived"]["samples"] == 128
    assert len(reference) + reference.metadata["dropped_covered"] == 128
    settings = json.loads((tmp_path / "a" / "settings.json").read_text())
    assert settings["mode"] == "conditional" and settings["reference_hash"] == reference.content_hash
    records = [json.loads(line) for line in (tmp_path / "a" / "records.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"safe-denoiser/conditional"}
    assert records[0]["parameters"]["reference"] == str(cached[0])
    last = next(line for line in printed.splitlines() if line.startswith("3 images in"))
    assert last.startswith(f"3 images in {tmp_path / 'a' / 'images'} (3 new, 0 already there); the correction changed")
    assert (tmp_path / "a" / "grid.png").is_file()
    # a second run reuses the cached set (same negation set, pipeline and settings)
    assert main(_argv(model_dir, prompts, tmp_path / "b", "--negation", neg)) == 0
    assert "reusing a reference set" in capsys.readouterr().out
    assert list(tmp_path.glob("neg.reference-*.safetensors")) == cached


@pytest.mark.parametrize("extra, message", [
    (["--eta", "2"], "--eta belongs to --mode paper, but this run uses --mode conditional (the default"),
    (["--mode", "paper", "--gain", "3"], "--gain belongs to --mode conditional, but this run uses --mode paper"),
    (["--mode", "paper", "--guard", "0.5"], "--guard belongs to --mode conditional, but this run uses --mode paper"),
    (["--mode", "reference", "--reference", "r.safetensors"], "--reference belongs to --mode conditional"),
])
def test_flags_of_another_mode_are_refused_before_the_pipeline_loads(files, tmp_path, capsys, extra, message):
    neg, prompts = files
    assert main(_argv(tmp_path / "no-such-model", prompts, tmp_path / "r", "--negation", neg, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_errors_name_the_file_before_slow_work(files, tmp_path, capsys):
    neg, prompts = files
    model = tmp_path / "no-such-model"  # never loaded: each error comes first
    assert main(_argv(model, prompts, tmp_path / "r", "--negation", tmp_path / "missing.safetensors")) == 2
    assert f"--negation file not found: {tmp_path / 'missing.safetensors'}" in capsys.readouterr().err
    assert main(_argv(model, prompts, tmp_path / "r", "--reference", neg)) == 2
    assert "--reference needs --negation (or --safety)" in capsys.readouterr().err
    binary = tmp_path / "prompts.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    assert main(_argv(model, binary, tmp_path / "r")) == 2
    assert f"{binary} is binary" in capsys.readouterr().err
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt\nun caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{latin}.*not UTF-8"):
        read_prompts(latin)
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffprompt,seed\na cat,4\n".encode("utf-8"))
    assert [(i.prompt, i.seed) for i in read_prompts(bom)] == [("a cat", 4)]


def test_an_unreachable_hub_id_is_one_line_naming_it(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _, prompts = files
    assert main(_argv("someorg/not-cached-model", prompts, tmp_path / "r")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'someorg/not-cached-model'" in err and "no download is possible" in err


def test_plain_run_says_plain_and_a_correction_that_never_acts_is_reported(model_dir, files, tmp_path, capsys,
                                                                          one_thread):
    neg, prompts = files
    assert main(_argv(model_dir, prompts, tmp_path / "plain")) == 0
    assert json.loads((tmp_path / "plain" / "settings.json").read_text())["mode"] == "plain"
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("3 images in") and "correction" not in out[-1]
    plain = {p.name: p.read_bytes() for p in (tmp_path / "plain" / "images").glob("*.png")}
    # the paper mode's weight underflows in this dimension: the images are the plain ones, and the run says so
    assert main(_argv(model_dir, prompts, tmp_path / "paper", "--negation", neg, "--mode", "paper")) == 0
    out = capsys.readouterr().out
    assert "the correction changed 0 of them" in out and "the correction changed no image" in out
    assert {p.name: p.read_bytes() for p in (tmp_path / "paper" / "images").glob("*.png")} == plain


def test_two_runs_with_other_settings_into_one_folder_exactly_one_is_accepted(tmp_path):
    for trial in range(20):
        out = tmp_path / f"out{trial}"
        out.mkdir()
        barrier, results = threading.Barrier(2), {}

        def start(steps: int) -> None:
            barrier.wait()
            try:
                check_settings(out, {"steps": steps})
                results[steps] = "accepted"
            except ValueError as err:
                results[steps] = str(err)

        threads = [threading.Thread(target=start, args=(steps,)) for steps in (5, 6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(v == "accepted" for v in results.values()) == [False, True], results
        stored = json.loads((out / "settings.json").read_text())["steps"]
        assert results[stored] == "accepted" and "other settings" in results[11 - stored]
    reliability_table.record("concurrency", "safe-denoiser generate", "two runs with other settings (5 / 6 steps) into "
                             "one --out, settings checks started together, 20 pairs", "ok: exactly one accepted per pair, "
                             "the other refused by name", kills=0, items=20, lost=0, duplicated=0, half_written=0,
                             identical=True)


def test_records_after_a_kill_are_byte_identical(sd, tmp_path, one_thread):
    """Batches are fixed by item position: the rerun recomputes item 1 in its batch [0, 1, 2], as uninterrupted, not
    alone (a batch of another size changes float32 sums in the records: checked below, so the test can fail)."""
    generator = torch.Generator().manual_seed(0)
    negation = NegationSet(torch.randn(10, *LATENT, generator=generator))
    reference = ReferenceSet(torch.randn(30, *LATENT, generator=generator) * 0.5 + 1)
    items = [PromptItem(i, p, 10 + i) for i, p in enumerate(["a cat", "a dog", "a house", "a tree", "a car"])]
    kwargs = dict(steps=4, height=IMAGE_SIZE, width=IMAGE_SIZE, progress=False)

    def run(out, batch_size=3):
        with attach_safe_denoiser(sd, negation, "conditional", reference=reference, gain=100.0) as hook:
            return generate(sd, items, out, hook=hook, batch_size=batch_size, **kwargs)

    def files(out):
        return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "lock" not in p.name}

    run(tmp_path / "whole")
    killed = tmp_path / "killed"
    run(killed)
    (killed / "images" / "000001.png").unlink()  # as if killed while writing the first batch
    (killed / "records" / "000001.json").unlink()
    assert run(killed)["done"] == 1
    assert files(killed) == files(tmp_path / "whole")
    run(tmp_path / "alone", batch_size=1)
    assert (tmp_path / "alone" / "records" / "000001.json").read_bytes() != files(killed)[Path("records/000001.json")]
    reliability_table.record("kill", "safe-denoiser generate", "item 1 of a batch of 3 lost, rerun (conditional mode: "
                             "float32 weights in the records)", "ok", kills=1, items=5, lost=0, duplicated=0,
                             half_written=0, identical=True)


def test_threads_default_follows_the_load(monkeypatch):
    monkeypatch.setenv("SAFEDENOISER_THREADS", "3")
    assert resolve_threads(None) == 3 and resolve_threads(2) == 2
    monkeypatch.delenv("SAFEDENOISER_THREADS")
    import os

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 5.0, 0.0, 0.0))
    assert idle_cores() == 1  # a busy machine: one thread
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert idle_cores() == cores
    monkeypatch.setenv("SAFEDENOISER_THREADS", "zero")
    with pytest.raises(ValueError, match="SAFEDENOISER_THREADS"):
        resolve_threads(None)


def test_grids_carry_a_caption(tmp_path):
    from PIL import Image

    from safedenoiser.zoo.images.grids import caption_file, labelled_grid

    paths = []
    for i in range(3):
        Image.new("L", (28, 28), 40 * i).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    grid = Image.open(labelled_grid(paths, tmp_path / "grid.png", "plain: 3 images", marks=[False, True, False]))
    assert grid.width == 3 * 56 + 4 * 2 and grid.height > 56 + 4  # the caption strip sits above the tiles
    assert grid.convert("RGB").getpixel((60, grid.height - 56)) == (255, 0, 0)  # the changed image's mark
    shutil.copy(paths[0], tmp_path / "c.png")
    assert Image.open(caption_file(tmp_path / "c.png", "a caption")).height > 28
    from safedenoiser.bench.demo import label_grids  # the demo's grids: task, method, knob, what was measured

    shutil.copy(paths[1], tmp_path / "grid_spell.png")
    label_grids(tmp_path, "negate trousers", {"grids": {"spell": "grid_spell.png"}, "best": {"spell": {
        "knob": "radius", "value": 9.0, "unsafe": 0.01, "fd": 3.21}}}, "trousers", quick=False)
    assert Image.open(tmp_path / "grid_spell.png").height > 28


def test_every_skip_in_the_suite_gives_a_reason_and_pytest_shows_them():
    """``pytest.skip(...)`` with a message, ``skipif(..., reason=...)``; ``-rs`` in addopts prints the reasons."""
    import ast
    import tomllib

    root = Path(__file__).resolve().parent
    silent = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                keywords = {k.arg for k in node.keywords}
                if (node.func.attr == "skip" and not node.args and "reason" not in keywords) or (
                        node.func.attr == "skipif" and "reason" not in keywords):
                    silent.append(f"{path.name}:{node.lineno}")
    assert not silent, f"skips without a reason: {silent}"
    config = tomllib.loads((root.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert "-rs" in config["tool"]["pytest"]["ini_options"]["addopts"].split()


# -- safety profiles ----------------------------------------------------------------------------------------------
@pytest.fixture
def sets(tmp_path):
    generator = torch.Generator().manual_seed(1)
    negation = NegationSet(torch.randn(10, *LATENT, generator=generator))
    reference = ReferenceSet(torch.randn(30, *LATENT, generator=generator) * 0.5 + 1)
    negation.save(tmp_path / "neg.safetensors")
    reference.save(tmp_path / "ref.safetensors")
    return negation, reference


def test_profile_round_trip_and_pipeline_check(sd, sets, tmp_path, one_thread):
    from safedenoiser.pipelines.profile import pipeline_identity

    negation, reference = sets
    profile = SafetyProfile(negation, "conditional", reference, {"gain": 4.0, "log_threshold": float("-inf")},
                            pipeline=pipeline_identity(sd, "tiny"))
    profile.save(tmp_path / "profile")
    config = json.loads((tmp_path / "profile" / CONFIG_NAME).read_text())
    assert config["_class_name"] == "SafetyProfile" and config["mode"] == "conditional"
    assert config["knobs"] == {"gain": 4.0, "log_threshold": "-inf"} and config["pipeline"]["model"] == "tiny"
    assert config["negation"]["content_hash"] == negation.content_hash
    loaded = SafetyProfile.load(tmp_path / "profile")
    assert torch.equal(loaded.reference.data, reference.data) and loaded.knobs == config["knobs"]
    with attach_profile(sd, tmp_path / "profile") as hook:
        assert hook.correction.gain == 4.0 and hook.correction.log_threshold == float("-inf")
    other = tiny_sd(tmp_path / "other", seed=1)  # same classes, other weights
    with pytest.raises(SafetyProfileError, match="built for 'tiny', whose denoiser weights differ"):
        loaded.attach(other)
    with pytest.raises(SafetyProfileError, match="has no safety_config.json"):
        SafetyProfile.load(tmp_path)
    with pytest.raises(SafetyProfileError, match="needs a reference set"):
        SafetyProfile(negation, "conditional")


def test_profile_build_then_generate_safety_equals_the_python_call(model_dir, sd, sets, tmp_path, capsys, one_thread):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    folder = tmp_path / "profile"
    assert main(["profile", "build", "--model", str(model_dir), "--negation", str(tmp_path / "neg.safetensors"),
                 "--reference", str(tmp_path / "ref.safetensors"), "--gain", "50", "--out", str(folder),
                 "--threads", "1"]) == 0
    assert f"wrote safety profile {folder} (mode conditional, 10 negation items, 30 reference items" in capsys.readouterr().out
    size = ["--height", str(IMAGE_SIZE), "--width", str(IMAGE_SIZE), "--steps", "3"]
    argv = ["generate", "--model", str(model_dir), "--safety", str(folder), "--prompts", str(prompts), "--out",
            str(tmp_path / "cli"), "--threads", "1", *size]
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "cli" / "records.jsonl").read_text().splitlines()]
    assert records[0]["parameters"]["gain"] == 50.0 and records[0]["parameters"]["safety"] == str(folder)
    with SafetyProfile.load(folder).attach(sd) as hook:
        generate(sd, read_prompts(prompts), tmp_path / "py", hook=hook, steps=3, guidance=7.5, height=IMAGE_SIZE,
                 width=IMAGE_SIZE, progress=False)
    images = {p.name: p.read_bytes() for p in (tmp_path / "cli" / "images").glob("*.png")}
    assert images == {p.name: p.read_bytes() for p in (tmp_path / "py" / "images").glob("*.png")}
    # a profile already holds sets and knobs: giving them again is refused before anything loads
    assert main(argv[:-len(size)] + ["--gain", "2"]) == 2
    assert "--safety" in capsys.readouterr().err


def test_profile_of_another_pipeline_is_refused_by_generate(model_dir, sets, tmp_path, capsys):
    negation, reference = sets
    SafetyProfile(negation, "conditional", reference, pipeline={"class": "FluxPipeline", "model": "flux-dev"}).save(
        tmp_path / "flux-profile")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    assert main(["generate", "--model", str(model_dir), "--safety", str(tmp_path / "flux-profile"), "--prompts",
                 str(prompts), "--out", str(tmp_path / "r"), "--steps", "2", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "built for 'flux-dev' (FluxPipeline), not for a StableDiffusionPipeline" in err


def test_the_web_engine_takes_a_profile_and_refuses_one_of_another_pipeline(sets, tmp_path, one_thread):
    from safedenoiser.pipelines.profile import pipeline_identity
    from safedenoiser.web.generation import Engine, Request, WebInputError, resolve

    engine = Engine()
    pipe = engine.model("fashion-t2i")
    generator = torch.Generator().manual_seed(2)
    negation = NegationSet(torch.rand(20, 1, 28, 28, generator=generator) - 1, space="pixels")
    reference = ReferenceSet(torch.rand(40, 1, 28, 28, generator=generator), space="pixels")
    profile = SafetyProfile(negation, "conditional", reference, pipeline=pipeline_identity(pipe, "fashion-t2i"))
    assert engine.use_profile(resolve(Request()), profile) is negation  # Engine.run(request, profile=...) calls it
    assert engine.reference(negation) is reference  # the profile's reference set, not one built from other images
    foreign = SafetyProfile(*sets[:1], "conditional", sets[1], pipeline={"class": "StableDiffusionPipeline",
                                                                          "model": "tiny"})
    with pytest.raises(WebInputError, match="built for 'tiny'"):
        engine.run(Request(count=1, steps=2), profile=foreign)


def test_profile_build_derives_a_reference_when_none_is_given(model_dir, files, tmp_path, capsys, one_thread):
    neg, _ = files
    folder = tmp_path / "derived-profile"
    assert main(["profile", "build", "--model", str(model_dir), "--negation", str(neg), "--out", str(folder),
                 "--steps", "2", "--height", str(IMAGE_SIZE), "--width", str(IMAGE_SIZE), "--threads", "1"]) == 0
    assert "derived a reference set" in capsys.readouterr().out
    profile = SafetyProfile.load(folder)
    assert profile.mode == "conditional" and profile.reference.metadata["derived"]["steps"] == 2
    assert not (tmp_path / "derived-profile.build").exists()  # nothing left beside the profile


def test_guard_out_of_range_is_refused_in_one_line(files, tmp_path, capsys):
    neg, prompts = files
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(tmp_path / "no-such-model", prompts, tmp_path / "r", "--negation", neg, "--guard", "2"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "argument --guard: expected a finite number >= 0 and <= 1, got '2'" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_guard_reaches_the_conditional_correction(model_dir, files, tmp_path, capsys, one_thread):
    """``--guard`` (the conditional mode's main knob) is passed to the correction and recorded with each image."""
    neg, prompts = files
    assert main(_argv(model_dir, prompts, tmp_path / "g", "--negation", neg, "--guard", "0.5")) == 0
    records = [json.loads(line) for line in (tmp_path / "g" / "records.jsonl").read_text().splitlines()]
    assert records and all(r["parameters"]["guard"] == 0.5 for r in records)


def test_concept_and_steer_reach_the_conditional_correction(model_dir, files, tmp_path, capsys, one_thread):
    """``--concept`` / ``--steer`` (conditional mode, version 6) are passed to the correction and recorded with each
    image; an empty concept and a concept with another mode are refused in one line."""
    neg, prompts = files
    assert main(_argv(model_dir, prompts, tmp_path / "c", "--negation", neg, "--concept", "trousers, pants",
                      "--steer", "2")) == 0
    records = [json.loads(line) for line in (tmp_path / "c" / "records.jsonl").read_text().splitlines()]
    assert records and all(r["parameters"]["concept"] == "trousers, pants" and r["parameters"]["steer"] == 2.0
                           for r in records)
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(model_dir, prompts, tmp_path / "e", "--negation", neg, "--concept", "  "))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "argument --concept: expected words" in err[-1]
    assert main(_argv(model_dir, prompts, tmp_path / "p", "--negation", neg, "--mode", "paper", "--concept", "x")) != 0
    assert "--concept belongs to --mode conditional" in capsys.readouterr().err
