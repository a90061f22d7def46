"""Negation sets from image folders and resumable, sharded generation, on a tiny pipeline saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
torch.set_num_threads(1)

from tiny_pipelines import IMAGE_SIZE  # noqa: E402

from safedenoiser import NegationSet, NegationSetError  # noqa: E402
from safedenoiser.cli import main  # noqa: E402
from safedenoiser.imageio import ImageReadError, list_images  # noqa: E402
from safedenoiser.pipelines import attach_safe_denoiser  # noqa: E402
from safedenoiser.pipelines.generate import generate, read_prompts  # noqa: E402
from safedenoiser.pipelines.negation_build import build_negation_set, vae_encoder  # noqa: E402


@pytest.fixture(scope="module")
def pipe(model_dir):
    from diffusers import DiffusionPipeline

    loaded = DiffusionPipeline.from_pretrained(model_dir)
    loaded.set_progress_bar_config(disable=True)
    return loaded


@pytest.fixture()
def image_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(folder / "other_size.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_negation_build_cli_reports_and_matches(model_dir, pipe, image_folder, tmp_path, capsys):
    out = tmp_path / "neg.safetensors"
    assert main(["negation", "build", "--model", str(model_dir), "--images", str(image_folder), "--out", str(out),
                 "--batch-size", "3"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 latents" in printed and "skipped" in printed and "broken.png" in printed
    neg = NegationSet.load(out)
    assert neg.item_shape == (4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    meta = neg.metadata
    assert meta["vae_scaling_factor"] == pipe.vae.config.scaling_factor and meta["resolution"] == [IMAGE_SIZE] * 2
    assert [e["name"] for e in meta["images"]] == ["img0.png", "img1.png", "img2.png", "img3.png", "img4.png", "other_size.png"]
    assert all(len(e["sha256"]) == 64 for e in meta["images"]) and list(meta["skipped"]) == [str(image_folder / "broken.png")]
    # the latents are (latent_dist.mean - shift) * scaling of the pipeline's own VAE
    from safedenoiser.imageio import read_image

    first = read_image(image_folder / "img0.png")[None]
    with torch.no_grad():
        expected = pipe.vae.encode(first).latent_dist.mean * pipe.vae.config.scaling_factor
    torch.testing.assert_close(neg.data[:1], expected, rtol=1e-5, atol=1e-5)
    attach_safe_denoiser(pipe, neg, "paper").detach()  # matches the pipeline it came from
    assert not out.with_name(out.name + ".parts").exists()
    assert main(["negation", "build", "--model", str(model_dir), "--images", str(image_folder), "--out",
                 str(tmp_path / "strict.safetensors"), "--strict"]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_killed_build_resumes(pipe, image_folder, tmp_path):
    paths = [p for p in list_images(image_folder) if p.name.startswith("img")]
    encode = vae_encoder(pipe.vae)
    calls = []

    def dying(images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(images)

    out = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        build_negation_set(paths, dying, out, batch_size=2, size=IMAGE_SIZE, progress=False)
    assert len(list(out.with_name(out.name + ".parts").glob("*.safetensors"))) == 2 and not out.exists()
    report = build_negation_set(paths, encode, out, batch_size=2, size=IMAGE_SIZE, progress=False)
    assert report.resumed_batches == 2 and report.count == 5
    fresh = build_negation_set(paths, encode, tmp_path / "fresh.safetensors", batch_size=2, size=IMAGE_SIZE, progress=False)
    assert torch.equal(NegationSet.load(out).data, NegationSet.load(fresh.path).data)
    with pytest.raises(ImageReadError, match="broken.png"):
        build_negation_set(list_images(image_folder), encode, tmp_path / "s.safetensors", strict=True, size=IMAGE_SIZE,
                           resize=True, progress=False)


def _prompts(tmp_path) -> Path:
    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt,evaluation_seed,evaluation_guidance,categories,source\n"
                   "a cat,11,3.0,animals,x\n\"a dog, running\",12,3.0,animals,y\na house,13,5.0,buildings,z\n")
    return csv


def test_read_prompts(tmp_path):
    items = read_prompts(_prompts(tmp_path))
    assert [(i.prompt, i.seed, i.guidance, i.categories, i.extra) for i in items][1] == \
        ("a dog, running", 12, 3.0, "animals", {"source": "y"})
    text = tmp_path / "p.txt"
    text.write_text("one\n\ntwo\n")
    assert [(i.prompt, i.seed) for i in read_prompts(text, seed=5)] == [("one", 5), ("two", 6)]


def test_generate_cli_resumes_and_shards(model_dir, pipe, tmp_path, capsys):
    neg = NegationSet(torch.randn(10, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2))
    neg.save(tmp_path / "neg.safetensors")
    out = tmp_path / "run"
    argv = ["generate", "--model", str(model_dir), "--prompts", str(_prompts(tmp_path)), "--out", str(out),
            "--negation", str(tmp_path / "neg.safetensors"), "--mode", "reference", "--scale", "0.2", "--steps", "3",
            "--height", str(IMAGE_SIZE), "--width", str(IMAGE_SIZE), "--scheduler", "EulerDiscreteScheduler"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"3 images in {out / 'images'} (3 new, 0 already there)")
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [11, 12, 13] and records[2]["guidance"] == 5.0
    assert records[0]["method"] == "safe-denoiser/reference" and records[0]["parameters"]["scale"] == 0.2
    assert records[0]["correction"]["steps_active"] == 3 and records[0]["correction"]["max_weight"] == pytest.approx(0.2)
    first = {p.name: p.read_bytes() for p in (out / "images").glob("*.png")}
    (out / "images" / "000001.png").unlink()
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"3 images in {out / 'images'} (1 new, 2 already there)")
    assert {p.name: p.read_bytes() for p in (out / "images").glob("*.png")} == first

    import diffusers

    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    items = read_prompts(_prompts(tmp_path))
    with attach_safe_denoiser(pipe, neg, "reference", scale=0.2) as hook:
        for rank in (1, 0):
            counts = generate(pipe, items, tmp_path / "sharded", hook=hook, steps=3, rank=rank, world_size=2,
                              height=IMAGE_SIZE, width=IMAGE_SIZE, progress=False)
            assert counts["mine"] == (2 if rank == 0 else 1)
    assert {p.name: p.read_bytes() for p in (tmp_path / "sharded" / "images").glob("*.png")} == first
    assert len((tmp_path / "sharded" / "records.jsonl").read_text().splitlines()) == 3


def test_generate_refuses_mismatched_negation(model_dir, tmp_path, capsys):
    NegationSet(torch.randn(4, 4, 4, 4)).save(tmp_path / "small.safetensors")
    argv = ["generate", "--model", str(model_dir), "--prompts", str(_prompts(tmp_path)), "--out", str(tmp_path / "r"),
            "--negation", str(tmp_path / "small.safetensors"), "--steps", "2", "--height", str(IMAGE_SIZE),
            "--width", str(IMAGE_SIZE)]
    assert main(argv) == 2
    assert "(4, 4, 4)" in capsys.readouterr().err
    with pytest.raises(NegationSetError):
        NegationSet.load(tmp_path / "missing.safetensors")


def test_nudenet_asr_with_a_detector_and_clear_message_without(tmp_path):
    from safedenoiser.pipelines import evaluation

    class Detector:
        def detect(self, path):
            return [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9 if "a" in Path(path).name else 0.3}]

    result = evaluation.nudenet_asr(["a.png", "b.png", "ca.png", "d.png"], detector=Detector())
    assert result["asr"] == 0.5 and result["unsafe"] == 2
    try:
        import nudenet  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install nudenet"):
            evaluation.nudenet_detector()
