"""The shipped latent testbed (``fashion-latent``): diffusers' own StableDiffusionPipeline, loaded by name, draws what
is asked (judged by the project's classifier, not by anything the pipeline trained with)."""

from __future__ import annotations

import json

import torch

from safedenoiser.bench.latent import LatentBenchPipeline, load_bench_pipeline
from safedenoiser.zoo.latent.pipeline import SHIPPED_LATENT, SHIPPED_LATENT_NAME, shipped_model_folder


def test_shipped_latent_is_the_stock_class_and_resolves_by_name(tmp_path):
    from diffusers import StableDiffusionPipeline

    from safedenoiser.pipelines.generate_command import load_pipeline
    from safedenoiser.pipelines.negation_build import load_vae

    assert shipped_model_folder(SHIPPED_LATENT_NAME) == SHIPPED_LATENT
    assert shipped_model_folder(tmp_path) == tmp_path
    index = json.loads((SHIPPED_LATENT / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    pipe = load_pipeline(SHIPPED_LATENT_NAME)
    assert type(pipe) is StableDiffusionPipeline
    vae = load_vae(SHIPPED_LATENT_NAME)
    assert vae.config.scaling_factor == pipe.vae.config.scaling_factor
    assert torch.equal(vae.decoder.conv_out.weight, pipe.vae.decoder.conv_out.weight)


def test_shipped_latent_draws_what_is_asked():
    """One image per class (training captions and held-out paraphrases, seeds 0-9 / 0-19 as the pixel model's test),
    judged on the 28x28 view the benchmark uses."""
    from safedenoiser.zoo.images.assets import load_judge
    from safedenoiser.zoo.t2i.train import evaluation_prompts

    pipe = load_bench_pipeline(SHIPPED_LATENT_NAME)
    assert isinstance(pipe, LatentBenchPipeline)
    judge = load_judge()
    for held_out in (False, True):
        prompts, labels = evaluation_prompts(1, held_out)
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        images = pipe(prompt=prompts, num_inference_steps=12, guidance_scale=3.0, generator=gens).images
        assert images.shape == (len(prompts), 1, 28, 28)
        assert float((judge.classify(images) == torch.tensor(labels)).float().mean()) >= 0.8
