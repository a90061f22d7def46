"""The fused one-pass CPU kernel (numba) against float64 explicit-difference references and the torch path."""

import pytest
import torch

from safedenoiser import cpu_kernel
from safedenoiser.bench.naive import naive_moments, relative_error as rel
from safedenoiser.kernels import kernel_moments

pytestmark = pytest.mark.skipif(not cpu_kernel.available(), reason="numba is not installed")


@pytest.mark.parametrize("storage", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("distance", ["squared", "euclidean"])
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8, 9])
def test_fused_matches_float64_reference_for_every_tile_remainder(storage, distance, batch, monkeypatch):
    monkeypatch.setattr(cpu_kernel, "MIN_FLOATS_PER_THREAD", 1)  # shard even this small set across threads
    gen = torch.Generator().manual_seed(batch)
    count, dim = 4099 + batch, 37  # rows cross a superblock and leave every remainder mod 4
    points = (2 * torch.randn(count, dim, generator=gen)).to(storage)
    x = points[:batch].float() + torch.randn(batch, dim, generator=gen)
    bandwidth = torch.linspace(2.0, 9.0, batch)
    ref_mass, ref_mean, ref_max = naive_moments(x.double(), points.double(), bandwidth.double(), distance)
    for threads, chunk in ((1, None), (2, 1000), (3, 7)):
        m = kernel_moments(x, points, bandwidth, distance=distance, backend="fused", threads=threads, chunk_size=chunk)
        assert m.log_mass.dtype == m.mean.dtype == torch.float32
        assert rel(m.log_mass, ref_mass) <= 1e-5 and rel(m.mean, ref_mean) <= 1e-5 and rel(m.max_logit, ref_max) <= 1e-5
    torch_path = kernel_moments(x, points, bandwidth, distance=distance, backend="torch")
    assert rel(m.mean, torch_path.mean) <= 1e-5 and rel(m.log_mass, torch_path.log_mass) <= 1e-5


def test_fused_large_set_and_threads_agree_with_the_torch_path():
    gen = torch.Generator().manual_seed(7)
    points = torch.randn(60_000, 300, generator=gen)
    x = torch.randn(8, 300, generator=gen)
    sigma = 300**0.5 * 0.5
    ref = kernel_moments(x.double(), points.double(), sigma, backend="torch")
    for threads in (1, 2):
        m = kernel_moments(x, points, sigma, backend="fused", threads=threads)
        assert rel(m.mean, ref.mean) <= 1e-5 and rel(m.log_mass, ref.log_mass) <= 1e-5


def test_underflowed_weights_are_skipped_exactly():
    """At a tiny bandwidth all but one weight underflow to 0; the mean must be that item exactly."""
    points = torch.randn(1001, 64, generator=torch.Generator().manual_seed(3))
    x = points[[5, 500, 1000, 17]] + 1e-3
    m = kernel_moments(x, points, 0.05, backend="fused")
    assert torch.equal(m.mean, points[[5, 500, 1000, 17]])


def test_auto_backend_and_errors():
    x = torch.randn(2, 8)
    for size, expected in (((50, 8), "torch"), ((70_000, 8), "fused")):
        points = torch.randn(*size)
        auto = kernel_moments(x, points, 1.5)
        chosen = kernel_moments(x, points, 1.5, backend=expected)
        assert torch.equal(auto.mean, chosen.mean) and torch.equal(auto.log_mass, chosen.log_mass)
    with pytest.raises(ValueError, match="fused kernel needs"):
        kernel_moments(x.double(), points.double(), 1.5, backend="fused")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernel_moments(x, points, 1.5, backend="triton")


def test_non_contiguous_inputs():
    points = torch.randn(40, 300)[:, ::3]  # (40, 100) strided view
    x = torch.randn(100, 3).T
    ref_mass, ref_mean, _ = naive_moments(x.double(), points.double(), 2.0)
    m = kernel_moments(x, points, 2.0, backend="fused")
    assert rel(m.mean, ref_mean) <= 1e-5 and rel(m.log_mass, ref_mass) <= 1e-5
