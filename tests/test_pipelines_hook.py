"""The safe-denoiser hook on tiny random-weight diffusers pipelines (built offline, see tiny_pipelines.py)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
torch.set_num_threads(1)

import diffusers  # noqa: E402
from tiny_pipelines import IMAGE_SIZE, STEPS, expected_x0, run, tiny_sd3, tiny_vae, with_scheduler  # noqa: E402

from safedenoiser import Calibration, NegationSet, NegationSetError, Window, make_correction  # noqa: E402
from safedenoiser.pipelines import UnsupportedPipelineError, attach_safe_denoiser  # noqa: E402
from safedenoiser.pipelines.negation_build import vae_metadata  # noqa: E402

SCHEDULERS = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
              "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
              "DEISMultistepScheduler"]
# An affine correction that acts at every noise level: the calibrated weight with a random bank.
ON = {"mode": "calibrated", "calibration": Calibration(torch.randn(30, 4 * (IMAGE_SIZE // 2) ** 2,
                                                                generator=torch.Generator().manual_seed(2)), 0.3)}


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return tiny_sd3(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def negation():
    return NegationSet(torch.randn(20, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("name", SCHEDULERS)
def test_off_is_bit_identical_and_on_changes(sd, negation, name):
    with_scheduler(sd, name)
    plain = run(sd, guidance=3.0)
    with attach_safe_denoiser(sd, negation, "paper", eta=0.0):
        assert torch.equal(run(sd, guidance=3.0), plain)
    if name == SCHEDULERS[0]:  # an empty window is the same identity path as eta = 0
        with attach_safe_denoiser(sd, negation, window=Window.never(), **ON):
            assert torch.equal(run(sd, guidance=3.0), plain)
    with attach_safe_denoiser(sd, negation, **ON) as handle:
        safe = run(sd, guidance=3.0)
        summary = handle.summary(1)[0]
    assert torch.isfinite(safe).all() and not torch.equal(safe, plain)
    assert summary["steps_active"] > 0 and summary["max_weight"] > 0
    assert torch.equal(run(sd, guidance=3.0), plain)  # detached
    assert "step" not in sd.scheduler.__dict__


def test_sd3_flow_off_is_bit_identical(sd3, negation):
    plain = run(sd3, guidance=3.0)
    with attach_safe_denoiser(sd3, negation, "paper", eta=0.0):
        assert torch.equal(run(sd3, guidance=3.0), plain)
    with attach_safe_denoiser(sd3, negation, **ON):
        assert not torch.equal(run(sd3, guidance=3.0), plain)


@pytest.mark.parametrize("case", ["ddim-eps", "ddim-v", "euler-eps", "euler-v", "flow", "ddim-reference"])
@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_scheduler_x0_is_the_safe_x0(sd, sd3, negation, case, guidance):
    """At every step the x0 the scheduler uses equals the core correction applied to the plain (guided) x0."""
    if case == "ddim-reference" and guidance > 1:
        pytest.skip("the reference mode's kernel acts on x0 (not affine), so per-branch differs from after-CFG")
    kind, _, variant = case.partition("-")
    if kind == "flow":
        pipe = sd3
    else:
        pipe = with_scheduler(sd, "DDIMScheduler" if kind == "ddim" else "EulerDiscreteScheduler",
                              prediction_type="v_prediction" if variant == "v" else "epsilon")
    knobs = {"mode": "reference", "scale": 0.3} if variant == "reference" else ON
    model = pipe.unet if kind != "flow" else pipe.transformer
    raw = []
    spy = model.register_forward_hook(lambda m, a, kw, out: raw.append((out[0] if isinstance(out, tuple) else out.sample).clone()),
                                      with_kwargs=True)
    sched = pipe.scheduler
    checked = []
    reference = make_correction(negation, **knobs)

    def step(model_output, timestep, sample, *args, **kwargs):
        branches = raw.pop()
        plain = branches if guidance == 1.0 else branches[:1] + guidance * (branches[1:] - branches[:1])
        x0, x, sigma = expected_x0(kind, sched, timestep, sample, plain)
        used, _, _ = expected_x0(kind, sched, timestep, sample, model_output)
        # at s = 1 (flow matching's first step) x is pure noise: the hook leaves the step as it is
        checked.append((used, reference(x, sigma, x0) if math.isfinite(sigma) else x0, x0))
        return type(sched).step(sched, model_output, timestep, sample, *args, **kwargs)

    sched.step = step
    try:
        with attach_safe_denoiser(pipe, negation, **knobs):
            run(pipe, guidance=guidance)
    finally:
        spy.remove()
        del sched.step
    assert len(checked) == STEPS
    for used, expected, plain in checked:
        torch.testing.assert_close(used, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert any((expected - plain).abs().max() > 1e-3 for _, expected, plain in checked)  # the correction acted


def test_unsupported_scheduler_is_named(sd, negation):
    with_scheduler(sd, "LCMScheduler")
    with pytest.raises(UnsupportedPipelineError, match="LCMScheduler"):
        attach_safe_denoiser(sd, negation, **ON)
    with_scheduler(sd, "DDIMScheduler")
    with attach_safe_denoiser(sd, negation, **ON):
        with_scheduler(sd, "KDPM2DiscreteScheduler")
        with pytest.raises(UnsupportedPipelineError, match="KDPM2DiscreteScheduler"):
            run(sd)
    with_scheduler(sd, "DDIMScheduler")


def test_guidance_rescale_and_churn_are_refused(sd, negation):
    with_scheduler(sd, "DDIMScheduler")
    with attach_safe_denoiser(sd, negation, **ON):
        with pytest.raises(UnsupportedPipelineError, match="guidance_rescale"):
            run(sd, guidance=3.0, guidance_rescale=0.7)
    with_scheduler(sd, "EulerDiscreteScheduler")
    with attach_safe_denoiser(sd, negation, **ON):
        run(sd)  # installs the guard on this scheduler
        sd.scheduler.set_timesteps(STEPS)
        x = torch.randn(1, 4, 8, 8)
        with pytest.raises(UnsupportedPipelineError, match="s_churn"):
            sd.scheduler.step(x, sd.scheduler.timesteps[0], x, s_churn=1.0)
    with_scheduler(sd, "DDIMScheduler")


def test_negation_of_wrong_shape_or_vae_is_refused(sd, negation):
    with_scheduler(sd, "DDIMScheduler")
    wrong = NegationSet(torch.randn(5, 4, 16, 16))
    with attach_safe_denoiser(sd, wrong, "paper", eta=1.0):
        with pytest.raises(NegationSetError, match=r"\(4, 16, 16\).*\(4, 8, 8\).*32x32 vs 16x16"):
            run(sd)
    other = NegationSet(negation.data, metadata=vae_metadata(tiny_vae(seed=7), "other/vae"))
    with pytest.raises(NegationSetError, match="VAE weights.*other/vae"):
        attach_safe_denoiser(sd, other)
    scaled = NegationSet(negation.data, metadata={**vae_metadata(sd.vae, "same"), "vae_scaling_factor": 0.13025})
    with pytest.raises(NegationSetError, match="vae_scaling_factor: negation set 0.13025, pipeline 0.18215"):
        attach_safe_denoiser(sd, scaled)
    same = NegationSet(negation.data, metadata=vae_metadata(sd.vae.to(torch.float16), "same"))
    sd.vae.to(torch.float32)
    attach_safe_denoiser(sd, same, "paper").detach()  # a float16 copy of the same VAE matches


def test_img2img_negative_prompt_and_sld(sd, negation):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipelineSafe

    with_scheduler(sd, "DDIMScheduler")
    image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    img2img = StableDiffusionImg2ImgPipeline(**sd.components)
    img2img.set_progress_bar_config(disable=True)
    kwargs = {"image": image, "strength": 0.6, "negative_prompt": "blurry"}
    plain = run(img2img, guidance=3.0, **kwargs)
    with attach_safe_denoiser(img2img, negation, "paper", eta=0.0):
        assert torch.equal(run(img2img, guidance=3.0, **kwargs), plain)
    with attach_safe_denoiser(img2img, negation, **ON):
        assert not torch.equal(run(img2img, guidance=3.0, **kwargs), plain)
    safe = StableDiffusionPipelineSafe(**{k: v for k, v in sd.components.items() if k != "image_encoder"},
                                       requires_safety_checker=False)
    safe.set_progress_bar_config(disable=True)
    sld = {"sld_guidance_scale": 100, "sld_warmup_steps": 0, "output_type": "pt"}
    plain = run(safe, guidance=3.0, **sld)
    with attach_safe_denoiser(safe, negation, "paper", eta=0.0):
        assert torch.equal(run(safe, guidance=3.0, **sld), plain)
    with attach_safe_denoiser(safe, negation, **ON) as handle:
        assert not torch.equal(run(safe, guidance=3.0, **sld), plain)
        assert handle.trace[0]["active"].shape == (3,)  # unconditional, prompt and safety-concept branches


def test_default_mode_is_conditional_with_a_derived_reference(sd, negation, tmp_path, monkeypatch):
    """``attach_safe_denoiser(pipe, negation)`` alone: the conditional mode, its reference set derived from the
    pipeline's own samples and cached beside a negation file (a second attach reads the cache: no sampling)."""
    from safedenoiser.methods.conditional import ConditionalCorrection
    from safedenoiser.pipelines import reference as reference_module

    with_scheduler(sd, "DDIMScheduler")
    monkeypatch.setattr(reference_module, "DERIVED_SAMPLES", 6)
    real_derive, calls = reference_module.derive_reference, []

    def small_derive(pipe, negation, **kwargs):
        calls.append(kwargs)
        return real_derive(pipe, negation, **{**kwargs, "samples": 6, "steps": 2, "batch_size": 3, "progress": False})

    monkeypatch.setattr(reference_module, "derive_reference", small_derive)
    negation = NegationSet(negation.data + 100.0)  # far from every sample: none of them is covered
    path = tmp_path / "unsafe.safetensors"
    negation.save(path)
    with attach_safe_denoiser(sd, path) as handle:
        assert isinstance(handle.correction, ConditionalCorrection)
        assert handle.correction.reference.metadata["derived"]["negation_hash"] == negation.content_hash
    assert len(calls) == 1 and len(list(tmp_path.glob("unsafe.reference-*.safetensors"))) == 1
    with attach_safe_denoiser(sd, path):
        pass
    assert len(calls) == 1  # the cached set
    with pytest.raises(ValueError, match="eta"):
        attach_safe_denoiser(sd, negation, eta=1.0, reference=handle.correction.reference)  # a paper knob
