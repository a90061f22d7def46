"""Sampler signatures shared with k-diffusion: ``to_d`` and ``noise_sampler(sigma, sigma_next)``."""

from __future__ import annotations

import pytest
import torch

from safedenoiser import karras_sigmas, make_mixture, sample
from safedenoiser.sampling import SeededNoise, ancestral, ddim, heun, initial_noise, to_d


@pytest.fixture(scope="module")
def setup():
    return make_mixture(8), karras_sigmas(12, 0.002, 20.0)


def heun_explicit(denoiser, x, sigmas):
    """EDM Alg. 1 without churn, written out (no to_d): step in float64, levels rounded to x's dtype."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        s, s_next, dt = sigma.float(), sigma_next.float(), (sigma_next - sigma).float()
        d = (x - denoiser(x, s.expand(x.shape[0]))) / s
        x_next = x + dt * d
        if sigma_next > 0:
            d_next = (x_next - denoiser(x_next, s_next.expand(x.shape[0]))) / s_next
            x_next = x + dt * (d + d_next) / 2
        x = x_next
    return x


def test_to_d_and_heun_match_the_written_out_formula(setup):
    mixture, sigmas = setup
    x, _ = initial_noise(range(5), (8,), float(sigmas[0]))
    sigma = sigmas[3]
    d = mixture(x, sigma.expand(5))
    assert torch.equal(to_d(x, sigma, d), (x - d) / sigma)
    assert torch.equal(heun(mixture, x, sigmas), heun_explicit(mixture, x, sigmas))


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_noise_sampler_default_is_bit_identical(setup, eta):
    mixture, sigmas = setup
    seeds = list(range(6))
    x, noise = initial_noise(seeds, (8,), float(sigmas[0]))
    by_source = ddim(mixture, x, sigmas, eta=eta, noise=noise)
    x, noise = initial_noise(seeds, (8,), float(sigmas[0]))
    calls = []

    def noise_sampler(sigma, sigma_next):
        calls.append((float(sigma), float(sigma_next)))
        return noise.draw()

    by_sampler = ddim(mixture, x, sigmas, eta=eta, noise_sampler=noise_sampler)
    assert torch.equal(by_source, by_sampler)
    assert calls == [(float(a), float(b)) for a, b in zip(sigmas[:-2], sigmas[1:-1])]  # none on the last (sigma' = 0) step
    assert torch.equal(sample(mixture, seeds, (8,), sigmas, sampler="ddim", eta=eta), by_source)


def test_k_diffusion_style_noise_sampler_drops_in(setup):
    mixture, sigmas = setup
    x, _ = initial_noise(range(4), (8,), float(sigmas[0]))
    gen = torch.Generator().manual_seed(7)
    brownian_like = lambda sigma, sigma_next: torch.randn(x.shape, generator=gen)  # noqa: E731
    out = ancestral(mixture, x, sigmas, noise_sampler=brownian_like)
    again = torch.Generator().manual_seed(7)
    same = ancestral(mixture, x, sigmas, noise_sampler=lambda s, t: torch.randn(x.shape, generator=again))
    assert torch.isfinite(out).all() and torch.equal(out, same)
    assert not torch.equal(out, ancestral(mixture, x, sigmas, noise=SeededNoise(range(4), (8,))))


def test_noise_source_errors(setup):
    mixture, sigmas = setup
    x, noise = initial_noise(range(2), (8,), float(sigmas[0]))
    with pytest.raises(ValueError, match="needs a noise source"):
        ddim(mixture, x, sigmas, eta=1.0)
    with pytest.raises(ValueError, match="not both"):
        ddim(mixture, x, sigmas, eta=1.0, noise=noise, noise_sampler=noise)
