"""The benchmark's tuning and held-out prompt sets, partly unsafe prompts, and the broken-output detector (issue 19
items 3 and 5). No generation: fast."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

from safedenoiser.zoo.images.data import FASHION_CLASSES  # noqa: E402
from safedenoiser.bench.t2i import SIZES, benchmark_rows, multi_rows  # noqa: E402
from safedenoiser.zoo.t2i.captions import held_out_captions, training_captions  # noqa: E402
from safedenoiser.zoo.t2i.prompts import PromptFileError, shipped_prompts, uses_class_words  # noqa: E402


def test_held_out_prompts_are_new_and_classified_by_their_words():
    seen = {r.prompt for name in ("explicit", "evasive", "search") for r in _rows(name)}
    captions = set(training_captions("trouser")) | set(held_out_captions("trouser"))
    explicit, evasive = shipped_prompts("explicit_held_out"), shipped_prompts("evasive_held_out")
    for row in explicit + evasive:
        assert row.prompt not in seen and row.prompt not in captions, row.prompt
        assert row.intended_class == "trouser"
    assert all(uses_class_words(r.prompt, "trouser") for r in explicit)
    assert not any(uses_class_words(r.prompt, "trouser") for r in evasive)
    assert not any(r.score is not None for r in evasive), "held-out evasive prompts are not selected by a score"


def _rows(name):
    from safedenoiser.zoo.t2i.prompts import PROMPTS_DIR, read_prompt_csv

    return read_prompt_csv(PROMPTS_DIR / f"{name}.csv") if name == "search" else shipped_prompts(name)


def test_partly_unsafe_prompts_name_an_allowed_class_and_the_avoided_one():
    for row in shipped_prompts("partial"):
        assert row.category == "partial" and row.intended_class != "trouser"
        assert uses_class_words(row.prompt, "trouser")
    held_out = shipped_prompts("partial_held_out")
    assert held_out and all(r.category == "partial" and r.intended_class != "trouser" for r in held_out)
    assert {r.intended_class for r in held_out} - {r.intended_class for r in shipped_prompts("partial")}  # other classes
    with pytest.raises(PromptFileError, match="unknown prompt set"):
        shipped_prompts("held_out")


def test_columns_share_no_row_and_seeds_are_distinct():
    size = SIZES["default"]
    tuning, held = benchmark_rows(size, "tuning"), benchmark_rows(size, "held_out")
    assert not set(tuning) & set(held)
    assert {r.category for r in tuning} == {"explicit", "evasive", "neutral", "partial"}
    assert {r.category for r in held} == {"explicit", "evasive", "neutral", "partial"}
    assert not {r.prompt for r in held if r.category == "partial"} & {r.prompt for r in tuning}
    assert len({r.seed for r in tuning + held}) == len(tuning + held)
    neutral = [r.intended_class for r in held if r.category == "neutral"]
    assert sorted(set(neutral)) == sorted(c for c in FASHION_CLASSES if c != "trouser")
    multi = multi_rows(size)
    assert {r.intended_class for r in multi if r.category == "explicit"} == {"trouser", "bag"}
    assert not {r.intended_class for r in multi if r.category == "neutral"} & {"trouser", "bag"}
    with pytest.raises(ValueError, match="column"):
        benchmark_rows(size, "test")


def test_broken_detector_flags_noise_not_real_images():
    from safedenoiser.zoo.images.assets import load_judge
    from safedenoiser.zoo.images.data import fashion_mnist_available, load_fashion_mnist
    from safedenoiser.zoo.images.evaluator import BrokenDetector

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed")
    judge = load_judge()
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    detector = BrokenDetector.calibrate(judge, train.images[:3000], test.images[:1000])
    real = detector(test.images[1000:2000]).double().mean()  # other held-out images than the calibration ones
    assert real <= 0.03
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(20, 1, 28, 28, generator=gen) * 2 - 1
    assert bool(detector(noise).all()), "pure noise is broken (the judge alone is confident on it)"
    blank = torch.full((4, 1, 28, 28), -1.0)
    assert detector(blank).dtype == torch.bool
