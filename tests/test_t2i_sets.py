"""Sets a user really has (issue 19 items 4 and 6): subsets, label noise, sets built from files, sets combined."""

from __future__ import annotations

import pytest
import torch

from safedenoiser.zoo.images.data import ImageData
from safedenoiser.negation import NegationSet, NegationSetError
from safedenoiser.pipelines.negation_combine import combine_sets, part_of
from safedenoiser.bench.t2i_sets import balanced_counts, balanced_set, build_user_set, noisy_class_set

CLASSES = tuple(f"c{k}" for k in range(4))


def _split(per_class=(7, 5, 6, 9), seed=0) -> ImageData:
    """Labels interleaved at random; image k holds the value k everywhere (so rows can be read back from pixels)."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    images = torch.arange(len(labels), dtype=torch.float32)[:, None, None, None].expand(-1, 1, 2, 2).clone()
    return ImageData(images, labels, CLASSES, "toy")


@pytest.mark.parametrize("total,classes", [(0, 3), (5, 9), (50, 9), (54, 9), (7, 1)])
def test_balanced_counts_split_evenly(total, classes):
    counts = balanced_counts(total, classes)
    assert sum(counts) == total and len(counts) == classes
    assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("size,noise", [(5, 0.0), (5, 0.2), (10, 0.3), (7, 0.5)])
def test_noisy_class_set_against_a_count(size, noise):
    data = _split()
    drawn = noisy_class_set(data, 0, size, noise, seed=3)
    rows = drawn.images[:, 0, 0, 0].long()
    assert torch.equal(rows, drawn.indices) and torch.equal(drawn.labels, data.labels[rows])
    own = [i for i in range(len(data)) if int(data.labels[i]) == 0]
    wrong = sum(int(data.labels[i]) != 0 for i in rows.tolist())
    assert len(drawn) == size and wrong == round(noise * size)
    assert rows.tolist()[: size - wrong] == own[: size - wrong]  # the clean part: the class's first images, in order
    assert len(set(rows.tolist())) == size  # no image twice
    again = noisy_class_set(data, 0, size, noise, seed=3)
    assert torch.equal(again.indices, drawn.indices)


def test_noisy_class_set_seeds_and_errors():
    data = _split((20, 20, 20, 20))
    picks = {tuple(noisy_class_set(data, 1, 10, 0.5, seed=s).indices.tolist()) for s in range(5)}
    assert len(picks) > 1
    with pytest.raises(ValueError, match="has 20 images"):
        noisy_class_set(data, 1, 30)
    with pytest.raises(ValueError, match="noise"):
        noisy_class_set(data, 1, 10, 1.0)


@pytest.mark.parametrize("total", [None, 3, 10, 15])
def test_balanced_set_against_a_count(total):
    data = _split()
    drawn = balanced_set(data, exclude=[2], total=total)
    counts = {c: int((drawn.labels == c).sum()) for c in range(4)}
    assert counts[2] == 0
    expected = {c: int((data.labels == c).sum()) for c in (0, 1, 3)} if total is None else dict(
        zip((0, 1, 3), balanced_counts(total, 3)))
    assert {c: counts[c] for c in (0, 1, 3)} == expected
    for c in (0, 1, 3):  # the first images of each class
        own = [i for i in range(len(data)) if int(data.labels[i]) == c]
        assert drawn.indices[drawn.labels == c].tolist() == own[: expected[c]]
    with pytest.raises(ValueError, match="asked for"):
        balanced_set(data, exclude=[], total=40)


def test_build_user_set_round_trips_8_bit_images():
    pixels = torch.randint(0, 256, (6, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float()
    images = pixels / 127.5 - 1
    negation = build_user_set(images, "negation")
    assert torch.equal(negation.data, images) and negation.space == "pixels"
    assert negation.metadata["pixel_sample_size"] == 28 and negation.metadata["count"] == 6
    reference = build_user_set(images[:3], "reference")
    assert type(reference).__name__ == "ReferenceSet" and reference.metadata["role"] == "reference"


def test_combine_sets_is_the_union_and_keeps_sources(tmp_path):
    a = NegationSet(torch.randn(5, 1, 3, 3), space="pixels", source="trousers", metadata={"model": "m", "pixel_channels": 1})
    b = NegationSet(torch.randn(3, 1, 3, 3), space="pixels", source="bags", metadata={"model": "m", "pixel_channels": 1})
    both = combine_sets({"trousers": a, "bags": b})
    assert torch.equal(both.data, torch.cat([a.data, b.data]))
    both.save(tmp_path / "both.safetensors")
    names, index = part_of(NegationSet.load(tmp_path / "both.safetensors"))
    assert names == ["trousers", "bags"] and index.tolist() == [0] * 5 + [1] * 3
    assert [p["content_hash"] for p in both.metadata["parts"]] == [a.content_hash, b.content_hash]
    # kernel mass of the union = sum of the parts' masses (its density = the count-weighted mixture of the parts')
    q = torch.randn(4, 9)
    whole = both.moments(q, 0.7)
    parts = [s.moments(q, 0.7) for s in (a, b)]
    assert torch.allclose(whole.log_mass, torch.logsumexp(torch.stack([p.log_mass for p in parts]), 0), atol=1e-5)
    assert part_of(a)[1].tolist() == [0] * 5


def test_combine_sets_refuses_sets_of_other_pipelines():
    a = NegationSet(torch.randn(2, 1, 3, 3), space="pixels", metadata={"model": "fashion-t2i"})
    with pytest.raises(NegationSetError, match="item shape"):
        combine_sets({"a": a, "b": NegationSet(torch.randn(2, 1, 4, 4), space="pixels")})
    with pytest.raises(NegationSetError, match="different pipelines.*model"):
        combine_sets({"a": a, "b": NegationSet(torch.randn(2, 1, 3, 3), space="pixels", metadata={"model": "other"})})
    with pytest.raises(NegationSetError, match="space"):
        combine_sets({"a": a, "b": NegationSet(torch.randn(2, 1, 3, 3), space="sd-vae latents", metadata={"model": "fashion-t2i"})})
    with pytest.raises(NegationSetError, match="no negation sets"):
        combine_sets({})


def test_bench_held_out_sets_are_the_test_images_encoded_by_negation_build():
    """``bench t2i``'s held-out sets go through :func:`build_user_set` (PNG files + ``negation build``'s code) and hold
    exactly the test images it names."""
    from safedenoiser.zoo.images.data import FASHION_CLASSES, fashion_mnist_available, load_fashion_mnist
    from safedenoiser.bench.t2i import AVOID, SIZES, held_out_sets

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed")
    size = SIZES["quick"]
    sets = held_out_sets(None, size)
    test, avoid = load_fashion_mnist("test"), FASHION_CLASSES.index(AVOID)
    assert torch.equal(sets.negation.data, test.of_class(avoid).images[: size.negation])
    expected = torch.cat([test.of_class(c).images[-size.reference_per_class:] for c in range(10) if c != avoid])
    assert torch.equal(sets.reference.data, expected) and sets.reference.metadata["role"] == "reference"
    assert sets.negation.metadata["pixel_pipeline"] == "FashionTextPipeline"


def test_combine_sets_balance_weighs_each_concept_equally():
    a = NegationSet(torch.randn(2, 4), space="pixels")
    b = NegationSet(torch.randn(6, 4), space="pixels")
    both = combine_sets({"a": a, "b": b}, balance=True)
    assert len(both) == 12 and [p["repeat"] for p in both.metadata["parts"]] == [3, 1]
    _, index = part_of(both)
    assert torch.equal(both.data[index == 0], a.data.repeat(3, 1)) and torch.equal(both.data[index == 1], b.data)
    # each part now carries half of the kernel mass's normaliser: mean kernel = (mean_a + mean_b) / 2
    q = torch.randn(5, 4)
    mean_kernel = lambda s: torch.exp(s.moments(q, 0.9).log_mass) / len(s)  # noqa: E731
    assert torch.allclose(mean_kernel(both), 0.5 * (mean_kernel(a) + mean_kernel(b)), rtol=1e-4)
