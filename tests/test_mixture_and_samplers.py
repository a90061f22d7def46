"""Samplers against closed forms; the mixture oracle against exact p_safe samples."""

import math

import pytest
import torch

from safedenoiser import GaussianMixture, make_mixture
from safedenoiser.metrics import median_bandwidths, mmd_permutation_pvalue, unsafe_fraction
from safedenoiser.models import VPModelDenoiser, linear_alphas_cumprod
from safedenoiser.models.conversions import eps_from_x0, v_from_x0, vp_from_ve
from safedenoiser.sampling import (ScheduleError, ancestral, check_schedule, ddim, euler, heun, initial_noise,
                                   karras_sigmas, sample, vp_sigmas)


def gaussian(std=0.5, dim=3):
    return GaussianMixture(torch.zeros(1, dim), torch.tensor([std]), torch.ones(1))


def test_mixture_denoiser_matches_tweedie_by_autograd():
    """E[x0|x] = x + sigma^2 grad log p_sigma(x) (Tweedie), with the score from autograd of the exact density."""
    mix = make_mixture(5, seed=3)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    sigma = 0.7
    (grad,) = torch.autograd.grad(mix.log_density(x, sigma).sum(), x)
    assert torch.allclose(mix.denoise(x.detach(), sigma), x.detach() + sigma**2 * grad, atol=1e-10)


def test_samplers_converge_to_the_exact_gaussian_flow_at_their_order():
    """For N(0, s^2) the probability-flow ODE maps x_T to x_T * s / sqrt(s^2 + sigma_T^2)."""
    std = 0.5
    x_T = torch.randn(64, 3, dtype=torch.float64) * 40.0
    exact = x_T * std / math.sqrt(std**2 + 40.0**2)

    def error(sampler, steps):
        return float(((sampler(gaussian(std), x_T, karras_sigmas(steps, 0.002, 40.0)) - exact).norm() / exact.norm()))

    assert error(heun, 128) < 1e-3
    assert error(heun, 64) < error(heun, 32) / 3  # second order
    assert error(euler, 128) < error(euler, 64) / 1.7  # first order


def test_ddim_eta0_equals_euler():
    mix, sigmas = make_mixture(4, seed=0), karras_sigmas(12)
    x = torch.randn(16, 4, dtype=torch.float64) * 80
    assert torch.allclose(ddim(mix, x, sigmas), euler(mix, x, sigmas), atol=1e-10)


def test_ancestral_sampler_has_the_right_marginal():
    std = 0.5
    x, noise = initial_noise(list(range(1000)), (1,), 80.0, dtype=torch.float64)
    out = ancestral(gaussian(std, 1), x, karras_sigmas(300), noise=noise)  # first order: bias ~0.004 here
    assert abs(float(out.std()) - std) < 0.035 and abs(float(out.mean())) < 0.05


@pytest.mark.parametrize("sampler", ["heun", "ancestral"])
def test_each_sample_depends_only_on_its_seed(sampler):
    mix = make_mixture(3, seed=1)
    sigmas = karras_sigmas(8)
    together = sample(mix, [5, 6, 7], (3,), sigmas, sampler=sampler)
    alone = sample(mix, [7], (3,), sigmas, sampler=sampler)
    assert torch.equal(together[2], alone[0])


@pytest.mark.parametrize("schedule, message", [
    (torch.tensor([3.0, 1.0, 0.1]), "must end in 0"),
    (torch.tensor([3.0, 4.0, 0.0]), "strictly decreasing"),
    (torch.tensor([[3.0, 0.0]]), "1-D"),
    (torch.tensor([float("nan"), 0.0]), "NaN"),
])
def test_bad_schedules_are_refused(schedule, message):
    with pytest.raises(ScheduleError, match=message):
        check_schedule(schedule)
    with pytest.raises(ScheduleError, match=message):
        heun(gaussian(), torch.zeros(2, 3), schedule)


def test_vp_schedule_matches_ddpm_sigmas():
    sigmas = vp_sigmas(10)
    abar = linear_alphas_cumprod()
    assert sigmas[-1] == 0 and math.isclose(float(sigmas[0]), math.sqrt((1 - abar[-1]) / abar[-1]), rel_tol=1e-12)
    check_schedule(sigmas)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_vp_adapter_recovers_the_exact_denoiser(prediction):
    """A VP network that predicts eps / v / x0 of the exact mixture becomes the exact VE denoiser again."""
    mix = make_mixture(4, seed=2)
    abar = linear_alphas_cumprod()
    log_sigmas = ((1 - abar) / abar).sqrt().log()

    def network(x_t, t):
        lo = t.floor().long().clamp(0, 998)
        sigma = torch.exp(log_sigmas[lo] + (t.double() - lo) * (log_sigmas[lo + 1] - log_sigmas[lo]))
        alpha, s = vp_from_ve(sigma)
        x0 = mix.denoise(x_t / alpha[:, None], sigma)
        if prediction == "eps":
            return eps_from_x0(x_t, x0, alpha[:, None], s[:, None])
        return v_from_x0(x_t, x0, alpha[:, None], s[:, None]) if prediction == "v" else x0

    den = VPModelDenoiser(network, abar, prediction)
    x, sigma = torch.randn(6, 4, dtype=torch.float64) * 3, torch.full((6,), 2.5, dtype=torch.float64)
    assert torch.allclose(den(x, sigma), mix.denoise(x, sigma), atol=1e-8)
    with pytest.raises(ValueError, match="unknown prediction"):
        VPModelDenoiser(network, abar, "score")


@pytest.mark.parametrize("dim", [2, 64])
def test_oracle_safe_denoiser_samples_p_safe(dim):
    """Acceptance: oracle + Heun has no unsafe samples beyond the Bayes error and passes a two-sample test."""
    mix, unsafe = make_mixture(dim, seed=0), [0, 1]
    safe = mix.restrict(range(2, 8))
    samples = sample(safe, list(range(400)), (dim,), karras_sigmas(40, 0.002, 20.0), sampler="heun", dtype=torch.float64)
    reference = safe.sample(400, torch.Generator().manual_seed(9))[0]
    bayes_error = 0.02 if dim == 2 else 0.0
    assert unsafe_fraction(mix.classify(samples), unsafe) <= bayes_error + 3 * math.sqrt(0.02 / 400)
    assert mmd_permutation_pvalue(samples, reference, median_bandwidths(reference), permutations=100) > 0.01
    plain = sample(mix, list(range(400)), (dim,), karras_sigmas(40, 0.002, 20.0), sampler="heun", dtype=torch.float64)
    assert mmd_permutation_pvalue(plain, reference, median_bandwidths(reference), permutations=100) <= 0.01
