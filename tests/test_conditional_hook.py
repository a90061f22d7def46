"""The hook's guided-x0 path for condition-aware corrections, on a tiny random-weight SD pipeline."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
torch.set_num_threads(1)

from tiny_pipelines import IMAGE_SIZE, STEPS, expected_x0, run, with_scheduler  # noqa: E402

from safedenoiser import NegationSet, make_correction  # noqa: E402
from safedenoiser.methods import ReferenceSet  # noqa: E402
from safedenoiser.pipelines import attach_safe_denoiser  # noqa: E402

SHAPE = (4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)


@pytest.fixture(scope="module")
def sets():
    gen = torch.Generator().manual_seed(1)
    negation = NegationSet(torch.randn(20, *SHAPE, generator=gen))
    reference = ReferenceSet(torch.randn(30, *SHAPE, generator=gen) + 0.5)
    return negation, reference


KNOBS = {"mode": "conditional", "gain": 1e6, "sigma_data": 5.0}  # r well inside (0, 1) on these random latents


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_scheduler_uses_the_corrected_guided_x0(sd, sets, guidance):
    """With CFG the scheduler's x0 is correction.guided(x0_u, x0_c, w) (the guided x0 corrected once), not the guidance
    of corrected branches."""
    negation, reference = sets
    pipe = with_scheduler(sd, "DDIMScheduler", prediction_type="epsilon")
    raw, checked = [], []
    spy = pipe.unet.register_forward_hook(lambda m, a, kw, out: raw.append((out[0] if isinstance(out, tuple) else out.sample).clone()), with_kwargs=True)
    sched = pipe.scheduler
    correction = make_correction(negation, reference=reference, **KNOBS)

    def step(model_output, timestep, sample, *args, **kwargs):
        branches = raw.pop()
        plain = branches if guidance == 1.0 else branches[:1] + guidance * (branches[1:] - branches[:1])
        x0, x, sigma = expected_x0("ddim", sched, timestep, sample, plain)
        used, _, _ = expected_x0("ddim", sched, timestep, sample, model_output)
        if guidance == 1.0:
            checked.append((used, correction(x, sigma, x0), x0))
        else:  # the guided x0 corrected once, its text direction reduced for flagged requests (issue 19)
            x0_u, x0_c = (expected_x0("ddim", sched, timestep, sample, b)[0] for b in (branches[:1], branches[1:]))
            checked.append((used, correction.guided(x, sigma, x0_u, x0_c, guidance), x0))
        return type(sched).step(sched, model_output, timestep, sample, *args, **kwargs)

    sched.step = step
    try:
        with attach_safe_denoiser(pipe, negation, reference=reference, **KNOBS) as handle:
            run(pipe, guidance=guidance)
            assert len(handle.trace) == STEPS and handle.trace[0]["active"].shape == (1,)
    finally:
        spy.remove()
        del sched.step
    assert len(checked) == STEPS
    for used, expected, plain in checked:
        torch.testing.assert_close(used, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert any((expected - plain).abs().max() > 1e-3 for _, expected, plain in checked)


def test_inactive_is_bit_identical_and_branches_path_differs(sd, sets):
    negation, reference = sets
    pipe = with_scheduler(sd, "DDIMScheduler", prediction_type="epsilon")
    plain = run(pipe, guidance=3.0)
    with attach_safe_denoiser(pipe, negation, **{**KNOBS, "gain": 0.0}, reference=reference):
        assert torch.equal(run(pipe, guidance=3.0), plain)
    with attach_safe_denoiser(pipe, negation, reference=reference, **KNOBS):
        guided = run(pipe, guidance=3.0)
    with attach_safe_denoiser(pipe, negation, reference=reference, guidance="branches", **KNOBS):
        branches = run(pipe, guidance=3.0)
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain) and not torch.equal(guided, branches)
    assert torch.equal(run(pipe, guidance=3.0), plain)  # detached
    with pytest.raises(ValueError, match="guidance path"):
        attach_safe_denoiser(pipe, negation, guidance="after", reference=reference, **KNOBS)


def test_negative_prompt_gets_the_empty_prompt_branch_for_flagged_rows(sd, sets):
    """With a negative prompt the hook hands the conditional mode ``null(rows)``: the model's x0 for the empty prompt
    (computed here independently with the pipeline's own empty-prompt embeddings) on the rows asked, x0_u elsewhere.
    An empty negative prompt is the plain null branch: no extra call, bit-identical to no negative prompt."""
    from tiny_pipelines import expected_x0 as x0_of

    negation, reference = sets
    pipe = with_scheduler(sd, "DDIMScheduler", prediction_type="epsilon")
    sched = pipe.unet, pipe.scheduler
    inputs, checks = [], []
    pre = pipe.unet.register_forward_pre_hook(lambda m, a, kw: inputs.append((a[0], a[1])), with_kwargs=True)
    empty = pipe.encode_prompt("", pipe.device, 1, False)[0]
    try:
        with attach_safe_denoiser(pipe, negation, reference=reference, **KNOBS) as handle:
            correction, original = handle.correction, handle.correction.guided

            def spy(x, sigma, x0_u, x0_c, w, combined=None, null=None):
                checks.append(null)
                if null is not None:
                    sample, t = inputs[-1]
                    eps = pipe.unet.forward(sample[1:], t, encoder_hidden_states=empty, return_dict=False)[0]
                    want = x0_of("ddim", sched[1], t, sample[1:], eps)[0]
                    torch.testing.assert_close(null(torch.tensor([True])), want, rtol=1e-5, atol=1e-5)
                    assert torch.equal(null(torch.tensor([False])), x0_u)
                return original(x, sigma, x0_u, x0_c, w, combined=combined, null=null)

            correction.guided = spy
            negative = run(pipe, guidance=3.0, negative_prompt="a red cat")
            assert len(checks) == STEPS and all(n is not None for n in checks)
            checks.clear()
            blank = run(pipe, guidance=3.0, negative_prompt="")
            assert checks == [None] * STEPS
            assert torch.equal(blank, run(pipe, guidance=3.0))
            del correction.guided
    finally:
        pre.remove()
    assert torch.isfinite(negative).all()


def test_concept_branch_runs_the_concept_prompt_on_flagged_rows(sd, sets):
    """``concept="..."``: the hook hands the conditional mode ``concept(rows)``, the model's x0 for the concept
    prompt (computed here independently with the pipeline's own embeddings of it) on the rows asked, x0_u elsewhere;
    without a negative prompt ``null`` is None (the null branch is the empty prompt). A pipeline that cannot encode
    the concept is refused in one line."""
    from tiny_pipelines import expected_x0 as x0_of

    from safedenoiser.pipelines.hook import UnsupportedPipelineError

    negation, reference = sets
    pipe = with_scheduler(sd, "DDIMScheduler", prediction_type="epsilon")
    inputs, checks = [], []
    pre = pipe.unet.register_forward_pre_hook(lambda m, a, kw: inputs.append((a[0], a[1])), with_kwargs=True)
    words = pipe.encode_prompt("a red cat", pipe.device, 1, False)[0]
    try:
        with attach_safe_denoiser(pipe, negation, reference=reference, concept="a red cat", **KNOBS) as handle:
            correction, original = handle.correction, handle.correction.guided

            def spy(x, sigma, x0_u, x0_c, w, combined=None, null=None, concept=None):
                checks.append((null, concept))
                sample, t = inputs[-1]
                eps = pipe.unet.forward(sample[1:], t, encoder_hidden_states=words, return_dict=False)[0]
                want = x0_of("ddim", pipe.scheduler, t, sample[1:], eps)[0]
                torch.testing.assert_close(concept(torch.tensor([True])), want, rtol=1e-5, atol=1e-5)
                assert torch.equal(concept(torch.tensor([False])), x0_u)
                return original(x, sigma, x0_u, x0_c, w, combined=combined, null=null, concept=concept)

            correction.guided = spy
            steered = run(pipe, guidance=3.0)
            assert len(checks) == STEPS and all(n is None and c is not None for n, c in checks)
            del correction.guided
        plain = run(pipe, guidance=3.0)
        with attach_safe_denoiser(pipe, negation, reference=reference, **KNOBS):
            dropped = run(pipe, guidance=3.0)
    finally:
        pre.remove()
    assert torch.isfinite(steered).all() and not torch.equal(steered, dropped) and not torch.equal(steered, plain)
    embeds = pipe.encode_prompt("a shoe", pipe.device, 1, True)
    tokenizer, pipe.tokenizer = pipe.tokenizer, None  # run from embeddings alone: nothing can encode the concept
    try:
        with attach_safe_denoiser(pipe, negation, reference=reference, concept="a red cat", **KNOBS):
            with pytest.raises(UnsupportedPipelineError, match="concept"):
                pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], num_inference_steps=STEPS,
                     height=IMAGE_SIZE, width=IMAGE_SIZE, output_type="latent", guidance_scale=3.0,
                     generator=torch.Generator().manual_seed(0))
    finally:
        pipe.tokenizer = tokenizer
