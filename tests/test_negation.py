import pytest
import torch

from safedenoiser import NegationSet, NegationSetError


@pytest.mark.parametrize("data, message", [
    (torch.zeros(0, 3), "empty"),
    (torch.tensor([[1.0, float("nan")]]), "NaN or infinite"),
    (torch.tensor([[1.0, float("inf")]]), "NaN or infinite"),
    (torch.zeros(4, 3, dtype=torch.int64), "floating point"),
    (torch.zeros(4), "shape \\(N, \\*item_shape\\)"),
    ([[1.0, 2.0]], "torch.Tensor"),
])
def test_invalid_sets_are_refused(data, message):
    with pytest.raises(NegationSetError, match=message):
        NegationSet(data)


def test_compatibility_errors_name_the_problem():
    neg = NegationSet(torch.randn(5, 1, 4, 4))
    neg.check_compatible(torch.randn(2, 1, 4, 4))
    with pytest.raises(NegationSetError, match="item shape \\(1, 4, 5\\).*\\(1, 4, 4\\)"):
        neg.check_compatible(torch.randn(2, 1, 4, 5))
    with pytest.raises(NegationSetError, match="floating point"):
        neg.check_compatible(torch.zeros(2, 1, 4, 4, dtype=torch.int32))


def test_save_load_round_trip(tmp_path):
    neg = NegationSet(torch.randn(6, 2, 3), space="pixels", source="unit test", metadata={"classes": ["trouser"]})
    path = tmp_path / "neg.safetensors"
    neg.save(path)
    back = NegationSet.load(path)
    assert torch.equal(back.data, neg.data)
    assert (back.space, back.source, back.metadata) == ("pixels", "unit test", {"classes": ["trouser"]})
    assert back.content_hash == neg.content_hash
    assert NegationSet(neg.data + 1).content_hash != neg.content_hash


def test_corrupt_and_foreign_files_are_reported(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(NegationSetError, match="cannot read negation set"):
        NegationSet.load(bad)
    with pytest.raises(NegationSetError, match="not found"):
        NegationSet.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"data": torch.zeros(2, 2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(NegationSetError, match="not a safedenoiser negation set"):
        NegationSet.load(tmp_path / "foreign.safetensors")


def test_to_changes_storage_dtype_and_keeps_metadata():
    neg = NegationSet(torch.randn(3, 4), space="latents", metadata={"a": 1}).to(dtype=torch.float16)
    assert neg.dtype == torch.float16 and neg.space == "latents" and neg.metadata == {"a": 1}
    assert neg.sq_norms.dtype == torch.float32
