"""The one training loop (issue 21, item 6): when it evaluates, checkpoints and stops."""

from __future__ import annotations

from safedenoiser.zoo.images.train import TrainClock, run_steps


def _run(total, *, start=0, eval_every=0, eval_at_end=False, plateau_at=None, stalled=False, checkpoint_every=3):
    clock = TrainClock(total, start, 0.0, float("nan"), 0.0, "test", progress=False)
    calls = []

    def train_step(step):
        calls.append(("step", step))
        return 1.0

    def evaluate():
        calls.append(("eval", clock.step))
        return plateau_at is not None and clock.step >= plateau_at

    stopped = run_steps(clock, train_step, checkpoint_every=checkpoint_every,
                        checkpoint=lambda s: calls.append(("checkpoint", clock.step, s)), eval_every=eval_every,
                        evaluate=evaluate, eval_at_end=eval_at_end, stalled=stalled)
    return calls, stopped, clock


def test_steps_evaluations_and_checkpoints_in_order():
    calls, stopped, clock = _run(7, eval_every=2)
    assert [c for c in calls if c[0] == "step"] == [("step", i) for i in range(7)]  # train_step sees the step before it
    assert [c for c in calls if c[0] != "step"] == [("eval", 2), ("checkpoint", 3, False), ("eval", 4), ("eval", 6),
                                                   ("checkpoint", 6, False), ("checkpoint", 7, False)]
    assert not stopped and clock.step == 7 and clock.loss_avg == 1.0
    calls, _, _ = _run(7, eval_every=2, eval_at_end=True)
    assert calls[-2:] == [("eval", 7), ("checkpoint", 7, False)]


def test_a_plateau_stops_with_a_checkpoint_and_a_stalled_run_takes_no_step():
    calls, stopped, clock = _run(20, eval_every=2, plateau_at=4)
    assert stopped and clock.step == 4 and calls[-2:] == [("eval", 4), ("checkpoint", 4, True)]
    calls, stopped, clock = _run(20, start=5, stalled=True)
    assert calls == [] and stopped and clock.step == 5
    calls, _, _ = _run(4, start=2)  # a resumed run continues from its step
    assert [c for c in calls if c[0] == "step"] == [("step", 2), ("step", 3)] and calls[-1] == ("checkpoint", 4, False)
