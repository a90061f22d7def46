"""Streamed kernel moments against a float64 brute-force reference (explicit differences, one row at a time)."""

import math

import pytest
import torch

from safedenoiser.bench.naive import naive_moments
from safedenoiser.kernels import kernel_moments, nearest_neighbours


def assert_close_relative(value, reference, tol):
    scale = reference.abs().clamp_min(1.0)
    assert torch.all((value.double() - reference).abs() <= tol * scale), float(((value.double() - reference).abs() / scale).max())


@pytest.mark.parametrize("n, dim", [(7, 2), (1000, 64), (10_000, 4096)])
def test_matches_float64_brute_force(n, dim):
    gen = torch.Generator().manual_seed(n + dim)
    points = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    x = torch.cat([points[:1] + 0.01 * torch.randn(1, dim, generator=gen, dtype=torch.float64),
                   torch.randn(1, dim, generator=gen, dtype=torch.float64)])
    for sigma in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e3):
        bandwidth = torch.full((2,), sigma, dtype=torch.float64)
        moments = kernel_moments(x, points, bandwidth, chunk_size=777)
        ref_mass, ref_mean, _ = naive_moments(x, points, bandwidth, rows=1)
        assert_close_relative(moments.log_mass, ref_mass, 1e-5)
        err = (moments.mean - ref_mean).norm(dim=1) / ref_mean.norm(dim=1).clamp_min(1e-12)
        assert float(err.max()) <= 1e-5, sigma
        assert torch.isfinite(moments.log_mass).all() and torch.isfinite(moments.mean).all()


def test_per_sample_bandwidth_and_plain_distance():
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(300, 16, generator=gen, dtype=torch.float64)
    x = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    bandwidth = torch.tensor([0.01, 0.3, 1.0, 30.0], dtype=torch.float64)
    for distance in ("squared", "euclidean"):
        moments = kernel_moments(x, points, bandwidth, distance=distance, chunk_size=64)
        ref_mass, ref_mean, _ = naive_moments(x, points, bandwidth, distance, rows=1)
        assert_close_relative(moments.log_mass, ref_mass, 1e-10)
        assert torch.allclose(moments.mean, ref_mean, rtol=1e-9, atol=1e-12)


def test_float32_storage_matches_at_moderate_noise():
    gen = torch.Generator().manual_seed(1)
    points = torch.randn(2000, 256, generator=gen)
    x = torch.randn(3, 256, generator=gen)
    bandwidth = torch.full((3,), 5.0, dtype=torch.float64)
    moments = kernel_moments(x, points, 5.0)
    ref_mass, ref_mean, _ = naive_moments(x.double(), points.double(), bandwidth, rows=1)
    assert moments.log_mass.dtype == torch.float32
    assert_close_relative(moments.log_mass, ref_mass, 1e-5)
    assert torch.allclose(moments.mean.double(), ref_mean, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_away_queries_stay_finite(dtype):
    points = torch.randn(500, 1024, dtype=dtype)
    x = torch.full((2, 1024), 1e6, dtype=dtype)
    x[1] *= -1
    for sigma in (1e-3, 1.0, 1e3):
        moments = kernel_moments(x, points, sigma)
        assert torch.isfinite(moments.log_mass).all() and torch.isfinite(moments.mean).all()
        assert moments.log_mass.max() < 0


def test_one_hot_limit_returns_the_nearest_item():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    moments = kernel_moments(torch.tensor([[0.9, 0.1]], dtype=torch.float64), points, 1e-3)
    assert torch.equal(moments.mean, points[1:2])


def test_nearest_neighbours_against_cdist():
    gen = torch.Generator().manual_seed(2)
    points = torch.randn(500, 8, generator=gen, dtype=torch.float64)
    dist, idx = nearest_neighbours(points, points, k=3, exclude_self=True, chunk_size=97)
    full = torch.cdist(points, points)
    full.fill_diagonal_(math.inf)
    ref_dist, ref_idx = full.topk(3, dim=1, largest=False)
    assert torch.allclose(dist, ref_dist, atol=1e-9)
    assert torch.equal(idx, ref_idx)


@pytest.mark.parametrize("bad", ["shape", "empty", "distance", "sigma", "zero", "negative"])
def test_kernel_input_errors(bad):
    x, points = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match={"shape": "x \\(B, D\\)", "empty": "at least one", "distance": "unknown distance",
                                          "sigma": "sigma must be", "zero": "positive and finite",
                                          "negative": "positive and finite"}[bad]):
        if bad == "shape":
            kernel_moments(x, torch.randn(5, 3), 1.0)
        elif bad == "empty":
            kernel_moments(x, points[:0], 1.0)
        elif bad == "distance":
            kernel_moments(x, points, 1.0, distance="cosine")
        elif bad == "sigma":
            kernel_moments(x, points, torch.ones(3))
        else:
            kernel_moments(x, points, 0.0 if bad == "zero" else -1.0)
