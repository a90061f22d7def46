"""The one classifier-free guidance module (issue 21 item 2) and a hook that leaves its correction alone (item 5).

Whole-pipeline bit-identity of the refactor is checked by ``tools/guidance_regression.py`` (record before, check
after); here: the formulas against hand-written ones, and what the hook may and may not touch."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from safedenoiser import NegationSet, make_correction
from safedenoiser.models.guidance import (
    GUIDANCE_PATHS,
    GuidedDenoiser,
    base_condition,
    combine,
    correct_guided,
    guidance_path,
)

torch.set_num_threads(1)


class Toy:
    """D(x, sigma, class_labels) = x * (label + 2) (null: label -1), counting calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, class_labels=None):
        self.calls.append(class_labels)
        return x * ((-1 if class_labels is None else class_labels) + 2.0)


class Shift:
    """A correction x0 -> x0 + 1 that records the stream it ran in."""

    def __init__(self, acts_on_guided=False):
        self.acts_on_guided, self.streams, self._stream = acts_on_guided, [], "default"

    def __call__(self, x, sigma, x0):
        self.streams.append(self._stream)
        return x0 + 1.0

    @contextmanager
    def stream(self, name):
        previous, self._stream = self._stream, name
        yield self
        self._stream = previous


def test_combination_negative_condition_and_paths():
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    assert torch.equal(combine(u, c, 2.5), torch.tensor([1.0 + 2.5 * 2.0, -2.0 + 2.5 * 2.5]))
    assert base_condition("", None) == "" and base_condition("", "a shirt") == "a shirt"
    assert guidance_path("auto", Shift()) == "branches" and guidance_path("auto", Shift(True)) == "guided"
    assert guidance_path("branches", Shift(True)) == "branches" and GUIDANCE_PATHS == ("auto", "branches", "guided")
    with pytest.raises(ValueError, match="guidance path 'after'"):
        guidance_path("after", None)
    with pytest.raises(ValueError, match="finite"):
        GuidedDenoiser(Toy(), float("nan"))


def test_guided_denoiser_branches():
    x, sigma = torch.tensor([[1.0, 2.0]]), torch.tensor([0.5])
    model = Toy()
    assert torch.equal(GuidedDenoiser(model, 1.0)(x, sigma, class_labels=3), x * 5) and model.calls == [3]  # one call
    assert torch.equal(GuidedDenoiser(model, 3.0)(x, sigma, class_labels=3), x * 1 + 3 * (x * 5 - x * 1))
    negative = GuidedDenoiser(model, 1.0, negative={"class_labels": 0})  # w = 1 with a negative class: computed
    assert torch.equal(negative(x, sigma, class_labels=3), x * 2 + 1.0 * (x * 5 - x * 2))
    # with a correction: once on the guided prediction, or on every branch (the base in the "null" stream)
    guided = GuidedDenoiser(model, 3.0, correction=Shift(), where="guided")
    assert torch.equal(guided(x, sigma, class_labels=3), x * 1 + 3 * (x * 5 - x * 1) + 1)
    shift = Shift()
    branches = GuidedDenoiser(model, 3.0, correction=shift)
    assert branches.where == "branches"
    assert torch.equal(branches(x, sigma, class_labels=3), (x + 1) + 3 * ((x * 5 + 1) - (x + 1)))
    assert shift.streams == ["default", "null"]


def test_correct_guided_hands_both_branches_to_a_guided_method():
    seen = {}

    class WithGuided(Shift):
        def guided(self, x, sigma, base, cond, scale, combined=None, **extra):
            seen.update(base=base, cond=cond, scale=scale, combined=combined, **extra)
            return combined

    u, c, x = torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 2)
    g = combine(u, c, 2.0)
    assert correct_guided(WithGuided(), x, 0.3, u, c, 2.0, combined=g, null="n") is g
    assert seen["scale"] == 2.0 and seen["null"] == "n" and seen["cond"] is c
    assert torch.equal(correct_guided(Shift(), x, 0.3, u, c, 2.0), g + 1)


def test_correction_copies_leave_the_original_alone():
    negation = NegationSet(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)))
    calls = []
    correction = make_correction(negation, "paper", callback=calls.append)
    copy = correction.replace(callback=None)
    assert copy is not correction and correction.callback == calls.append and copy.negation is negation
    assert correction.to("cpu") is correction
    if torch.cuda.is_available():
        moved = correction.to("cuda")
        assert moved.negation.device.type == "cuda" and moved.callback == calls.append
        assert correction.negation is negation
    with pytest.raises(AttributeError, match="no attribute colour"):
        correction.replace(colour="red")


def test_hook_does_not_change_the_correction_it_is_given(sd):
    from tiny_pipelines import IMAGE_SIZE, run, with_scheduler

    from safedenoiser import Calibration
    from safedenoiser.pipelines import attach_safe_denoiser

    pipe = with_scheduler(sd, "DDIMScheduler")
    latent = IMAGE_SIZE // 2
    negation = NegationSet(torch.randn(20, 4, latent, latent, generator=torch.Generator().manual_seed(1)))
    bank = torch.randn(30, 4 * latent**2, generator=torch.Generator().manual_seed(2))
    calls = []
    correction = make_correction(negation, "calibrated", calibration=Calibration(bank, 0.3), callback=calls.append)
    before = {name: id(value) for name, value in vars(correction).items()}
    with attach_safe_denoiser(pipe, correction) as hook:
        run(pipe, guidance=3.0)
        assert hook.given is correction and hook.correction is not correction
        assert len(hook.trace) == len(calls) > 0  # the user's callback still sees every call
    assert {name: id(value) for name, value in vars(correction).items()} == before
    assert "step" not in pipe.scheduler.__dict__ and "set_timesteps" not in pipe.scheduler.__dict__
