"""Per-call and per-thread state of the conditional mode (issue 25, items 2 and 3): a pipeline call stopped by an
exception leaves nothing to the next call, and one correction serves two threads as two separate runs."""

from __future__ import annotations

import threading

import pytest
import torch

torch.set_num_threads(1)

from safedenoiser import NegationSet, make_correction  # noqa: E402
from safedenoiser.methods import ReferenceSet  # noqa: E402


def sets(shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return NegationSet(torch.randn(20, *shape, generator=gen)), ReferenceSet(torch.randn(30, *shape, generator=gen) + 0.5)


class Stop(Exception):
    pass


def test_a_call_stopped_by_an_exception_leaves_no_latch(sd):
    """Issue 25 item 2: a call stopped after its first step by callback_on_step_end, with other latents, must not
    change the next call's images (the hook resets the correction at every set_timesteps)."""
    pytest.importorskip("diffusers")
    from tiny_pipelines import IMAGE_SIZE, run, with_scheduler

    from safedenoiser.pipelines import attach_safe_denoiser

    negation, reference = sets((4, IMAGE_SIZE // 2, IMAGE_SIZE // 2))
    pipe = with_scheduler(sd, "DDIMScheduler", prediction_type="epsilon")
    knobs = {"mode": "conditional", "reference": reference, "gain": 1e-3, "sigma_data": 5.0}  # some rows near L = 0

    def stop(*args, **kwargs):
        raise Stop

    with attach_safe_denoiser(pipe, negation, **knobs):
        fresh = run(pipe, seed=0, guidance=3.0)
    with attach_safe_denoiser(pipe, negation, **knobs) as handle:
        for seed in range(1, 7):  # other latents, stopped after one step: their latches stay behind without the reset
            with pytest.raises(Stop):
                run(pipe, seed=seed, guidance=3.0, callback_on_step_end=stop)
        after = run(pipe, seed=0, guidance=3.0)
        assert handle.trace, "the hook acted"
    assert torch.equal(after, fresh)


def trajectory(correction, x, x0, sigmas, barrier=None):
    """The conditional correction along a fixed schedule of sigmas (a sampling run), optionally in lockstep with
    another thread: every step waits for the other thread's step."""
    out = []
    for sigma in sigmas:
        if barrier is not None:
            barrier.wait()
        out.append(correction(x * sigma, sigma, x0))
    return torch.stack(out)


def test_one_correction_in_two_threads_equals_two_separate_runs():
    """Issue 25 item 3: two threads interleaving their steps on one correction get what each gets alone (the latch is
    per thread). Thread A's request looks unsafe (x0 on the negation items), thread B's allowed: a shared latch would
    flag B with A's evidence."""
    negation, reference = sets((16,))
    correction = make_correction(negation, "conditional", reference=reference)
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25]).tolist()
    gen = torch.Generator().manual_seed(3)
    inputs = {"a": (torch.randn(4, 16, generator=gen), negation.data[:4] + 0.05 * torch.randn(4, 16, generator=gen)),
              "b": (torch.randn(4, 16, generator=gen), reference.data[:4] + 0.05 * torch.randn(4, 16, generator=gen))}
    alone = {}
    for name, (x, x0) in inputs.items():
        correction.reset()
        alone[name] = trajectory(correction, x, x0, sigmas)
    assert not torch.equal(alone["a"][-1], inputs["a"][1]), "thread A's request is corrected"
    for _ in range(3):
        barrier, together, errors = threading.Barrier(2, timeout=30), {}, []

        def work(name):
            try:
                together[name] = trajectory(correction, *inputs[name], sigmas, barrier)
            except Exception as err:  # noqa: BLE001 (reported below)
                errors.append(err)

        threads = [threading.Thread(target=work, args=(name,)) for name in inputs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for name in inputs:
            assert torch.equal(together[name], alone[name]), name
