"""The sets (issue 21, item 4): one base for the negation and the reference set, one coverage module, one file reader."""

from __future__ import annotations

import math

import pytest
import torch

from safedenoiser.coverage import COVERAGE_CUTS, covered_by_log_odds, fixed_point_cut, knn_coverage
from safedenoiser.methods import Calibration
from safedenoiser.methods import conditional
from safedenoiser.negation import ItemSet, NegationSet, NegationSetError, ReferenceSet, ReferenceSetError
from safedenoiser.negation_file import MappedFileError, read_set_file


def test_one_base_and_the_kind_named_by_the_class():
    assert issubclass(NegationSet, ItemSet) and issubclass(ReferenceSet, ItemSet)
    assert not issubclass(ReferenceSet, NegationSet)
    assert conditional.ReferenceSet is ReferenceSet and conditional.ReferenceSetError is ReferenceSetError

    class AllowedSetError(NegationSetError):
        pass

    class AllowedSet(ItemSet):  # a third kind: its messages come from the class, nothing rewrites them
        kind, error = "allowed set", AllowedSetError

    for cls, error, kind in ((NegationSet, NegationSetError, "negation set"), (ReferenceSet, ReferenceSetError, "reference set"),
                             (AllowedSet, AllowedSetError, "allowed set")):
        with pytest.raises(error, match=f"^{kind} is empty: it needs at least one item$"):
            cls(torch.zeros(0, 3))
        with pytest.raises(error, match=f"^{kind} contains NaN or infinite values$"):
            cls(torch.tensor([[0.0, math.inf]]))
        with pytest.raises(error, match=rf"^samples have item shape \(2,\) but the {kind} \(data\) has item shape \(3,\)$"):
            cls(torch.zeros(2, 3)).check_compatible(torch.zeros(1, 2))
        with pytest.raises(error, match=rf"^samples are on meta but the {kind} is on cpu; use {cls.__name__}\.to\(\)$"):
            cls(torch.zeros(2, 3)).check_compatible(torch.zeros(1, 3, device="meta"))
        moved = cls(torch.zeros(2, 3), metadata={"a": 1}).to(dtype=torch.float64)
        assert type(moved) is cls and moved.dtype == torch.float64 and repr(moved).startswith(f"{cls.__name__}(n=2,")
    assert ReferenceSet(torch.zeros(2, 3), metadata={"a": 1}).metadata == {"a": 1, "role": "reference"}
    assert NegationSet(torch.zeros(2, 3), metadata={"a": 1}).metadata == {"a": 1}


def test_one_reader_for_both_sets_in_memory_and_mapped(tmp_path):
    ref = ReferenceSet(torch.randn(6, 2, 3), space="pixels", source="allowed", metadata={"n": 6})
    ref.save(tmp_path / "ref.safetensors")
    for mmap in (False, True):
        data, fields = read_set_file(tmp_path / "ref.safetensors", mmap=mmap)
        assert torch.equal(data, ref.data)
        assert fields == {"space": "pixels", "source": "allowed", "metadata": {"n": 6, "role": "reference"},
                          "content_hash": ref.content_hash}
        loaded = ReferenceSet.load(tmp_path / "ref.safetensors", mmap=mmap)
        assert type(loaded) is ReferenceSet and loaded.metadata == ref.metadata and torch.equal(loaded.data, ref.data)
    as_negation = NegationSet.load(tmp_path / "ref.safetensors")  # the same format: a reference file reads as a set
    assert type(as_negation) is NegationSet and as_negation.content_hash == ref.content_hash
    from safedenoiser.fileio import save_safetensors

    save_safetensors({"data": torch.zeros(2, 3)}, tmp_path / "other.safetensors", {"format": "something else"})
    for mmap in (False, True):
        with pytest.raises(ReferenceSetError, match="is a safetensors file but not a safedenoiser reference set$"):
            ReferenceSet.load(tmp_path / "other.safetensors", mmap=mmap)
    with pytest.raises(MappedFileError, match="not a safedenoiser negation set"):
        read_set_file(tmp_path / "other.safetensors")
    with pytest.raises(ReferenceSetError, match="^reference set not found"):
        ReferenceSet.load(tmp_path / "missing.safetensors")


def _brute_knn_share(items, negation):
    """Per item: the share of negation items among its k nearest in (negation + the other items), every distance
    sorted, k = min(20, N, M - 1)."""
    m, n = items.shape[0], negation.shape[0]
    k = min(20, n, m - 1)
    shares = []
    for i in range(m):
        others = torch.cat([items[:i], items[i + 1:]])
        dist = torch.cdist(items[i:i + 1].double(), torch.cat([negation, others]).double())[0]
        labels = torch.cat([torch.ones(n), torch.zeros(m - 1)])
        shares.append(labels[dist.argsort()[:k]].mean())
    return torch.stack(shares).double()


def test_coverage_agrees_with_brute_force_and_serves_every_user():
    gen = torch.Generator().manual_seed(4)
    negation = torch.randn(40, 6, generator=gen) - 1.5
    items = torch.cat([torch.randn(25, 6, generator=gen) - 1.5, torch.randn(35, 6, generator=gen) + 1.5])
    neg = NegationSet(negation)
    share = _brute_knn_share(items, negation)
    for cut in COVERAGE_CUTS:
        covered, threshold = knn_coverage(items, neg, 20, cut)
        expected_cut = 0.5 * 40 / (40 + 60) if cut == "worst-case" else fixed_point_cut(share, 40)
        assert threshold == pytest.approx(expected_cut)
        assert torch.equal(covered, share >= expected_cut)
        calibration = Calibration.from_bank(items, neg, cut=cut)  # the bank split is the same rule
        assert calibration.coverage_threshold == threshold and calibration.safe_bank.shape[0] == int((~covered).sum())
        assert torch.equal(calibration.is_covered(items[~covered][:5], neg), torch.zeros(5, dtype=torch.bool))
    covered, _ = knn_coverage(items, neg)
    assert 20 <= int(covered[:25].sum()) and int(covered[25:].sum()) == 0
    assert torch.equal(ReferenceSet(items).covered_by(neg), covered)
    with pytest.raises(ValueError, match="cut must be one of"):
        knn_coverage(items, neg, cut="median")
    log_odds = torch.randn(50, generator=gen) * 3
    labels, share_covered = covered_by_log_odds(log_odds, 0.1)
    assert torch.equal(labels, log_odds.exp() >= 0.1) and share_covered == pytest.approx(float(labels.double().mean()))
