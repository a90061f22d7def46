"""Modes by name: every mode is built from the one table, and its knobs read back through ``config``."""

from __future__ import annotations

import pytest
import torch

from safedenoiser import NegationSet
from safedenoiser.methods import MODE_CLASSES, MODES, Calibration, ReferenceSet, make_correction


def _extras(mode, negation):
    if mode in ("calibrated", "substitution"):
        return {"calibration": Calibration(torch.randn(30, 4, generator=torch.Generator().manual_seed(2)), 0.25)}
    if mode == "conditional":
        return {"reference": ReferenceSet(torch.randn(30, 4, generator=torch.Generator().manual_seed(3)) + 5)}
    return {}


KNOB_VALUES = {"eta": 3.0, "gain": 2.5, "scale": 0.7, "bandwidth": 0.9, "max_weight": 50.0, "log_threshold": -4.0,
               "bandwidth_scale": 1.5, "sigma_data": 0.4, "heading": 0.5}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_reads_its_knobs_back(mode):
    negation = NegationSet(torch.randn(12, 4, generator=torch.Generator().manual_seed(1)))
    cls = MODE_CLASSES[mode]
    knobs = {k: v for k, v in KNOB_VALUES.items() if k in cls.KNOBS}
    assert knobs, f"{mode} declares no numeric knob"
    correction = make_correction(negation, mode, **_extras(mode, negation), **knobs)
    assert type(correction) is cls
    config = correction.config
    assert {k: config[k] for k in knobs} == knobs
    assert set(cls.KNOBS) <= set(config) and config["method"] == cls.__name__
    # the read-back knobs rebuild an identical correction
    again = make_correction(negation, mode, **_extras(mode, negation), **{k: config[k] for k in knobs})
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(4))
    x0 = x * 0.5
    assert torch.equal(correction(x, 0.8, x0), again(x, 0.8, x0))


def test_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match="unknown safe-denoiser mode 'nope'.*paper"):
        make_correction(NegationSet(torch.randn(3, 2)), "nope")
