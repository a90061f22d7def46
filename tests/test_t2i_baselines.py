"""Text-side baselines (SLD, SAFREE) and SGF kernel repulsion against independent re-derivations: element-by-element
loops in Python floats, pseudo-inverse projectors written as the authors do, brute-force float64 kernels."""

import math

import pytest
import torch

from safedenoiser import NegationSet, Window
from safedenoiser.methods.safree import SafreeConfig, leave_one_out_embeddings, safree_embeddings, safree_step_mask
from safedenoiser.methods.sgf import KernelRepulsion
from safedenoiser.methods.sld import SLDConfig, sld_guidance

torch.set_num_threads(1)


# ---------------------------------------------------------------- SLD

def sld_reference(branches, cfg_scale, cfg):
    """SLD on every element separately, in Python floats, over a list of (uncond, text, concept) steps."""
    outs, flat = [], [tuple(t.flatten().tolist() for t in step) for step in branches]
    momentum = [0.0] * len(flat[0][0])
    for step, (unc, txt, con) in enumerate(flat):
        out = []
        for j in range(len(unc)):
            mu = min(abs(txt[j] - con[j]) * cfg.guidance_scale, 1.0) if txt[j] - con[j] < cfg.threshold else 0.0
            safety = mu * (con[j] - unc[j]) + cfg.momentum_scale * momentum[j]
            momentum[j] = cfg.momentum_beta * momentum[j] + (1 - cfg.momentum_beta) * safety
            guide = txt[j] - unc[j] - (safety if step >= cfg.warmup_steps else 0.0)
            out.append(unc[j] + cfg_scale * guide)
        outs.append(out)
    return outs, momentum


def random_branches(steps, shape=(2, 1, 3, 3), seed=0, spread=0.05):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        unc = torch.randn(shape, generator=gen, dtype=torch.float64)
        txt = unc + spread * torch.randn(shape, generator=gen, dtype=torch.float64)
        con = txt + spread * torch.randn(shape, generator=gen, dtype=torch.float64)
        out.append((unc, txt, con))
    return out


def run_sld(branches, cfg_scale, cfg):
    momentum, outs = None, []
    for step, (unc, txt, con) in enumerate(branches):
        guided, momentum = sld_guidance(unc, txt, con, step=step, cfg_scale=cfg_scale, config=cfg, momentum=momentum)
        outs.append(guided)
    return outs, momentum


@pytest.mark.parametrize("preset", ["weak", "medium", "strong", "max"])
def test_sld_matches_elementwise_rederivation(preset):
    cfg = SLDConfig.preset(preset)
    cfg = SLDConfig(cfg.guidance_scale / 100, min(cfg.warmup_steps, 2), cfg.threshold, cfg.momentum_scale,
                    cfg.momentum_beta)  # scales that leave mu below its clamp, and a warm-up inside 5 steps
    branches = random_branches(5)
    got, momentum = run_sld(branches, 7.5, cfg)
    want, want_momentum = sld_reference(branches, 7.5, cfg)
    for g, w in zip(got, want):
        assert torch.allclose(g.flatten(), torch.tensor(w, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(momentum.flatten(), torch.tensor(want_momentum, dtype=torch.float64), atol=1e-12)


def test_sld_warmup_builds_momentum_without_guiding():
    cfg = SLDConfig(guidance_scale=10.0, warmup_steps=3, threshold=0.5, momentum_scale=0.3, momentum_beta=0.4)
    branches = random_branches(4)
    outs, momentum = [], None
    for step, (unc, txt, con) in enumerate(branches):
        guided, momentum = sld_guidance(unc, txt, con, step=step, cfg_scale=5.0, config=cfg, momentum=momentum)
        cfg_only = unc + 5.0 * (txt - unc)
        if step < 3:
            assert torch.equal(guided, cfg_only)
            assert momentum.abs().max() > 0
        else:
            assert not torch.allclose(guided, cfg_only)


def test_sld_threshold_masks_elements():
    cfg = SLDConfig(guidance_scale=5.0, warmup_steps=0, threshold=0.01, momentum_scale=0.0, momentum_beta=0.0)
    unc, txt, con = random_branches(1, shape=(4, 1, 8, 8))[0]
    guided, momentum = sld_guidance(unc, txt, con, step=0, cfg_scale=3.0, config=cfg)
    cfg_only = unc + 3.0 * (txt - unc)
    masked = (txt - con) >= 0.01
    assert masked.any() and (~masked).any()
    assert torch.equal(guided[masked], cfg_only[masked])
    assert (guided[~masked] != cfg_only[~masked]).all()
    mu = torch.clamp(5.0 * (txt - con).abs(), max=1.0)
    assert torch.allclose(guided[~masked], (cfg_only - 3.0 * mu * (con - unc))[~masked], atol=1e-12)
    term = torch.where(masked, torch.zeros_like(mu), mu) * (con - unc)
    assert torch.allclose(momentum, term, atol=1e-12)  # beta 0: the momentum is this step's safety term


def test_sld_momentum_accumulates_geometrically():
    """Constant branches, no warm-up, s_m = 0: nu_n = (1 - (beta)^n) * gamma, an independent closed form."""
    beta = 0.6
    cfg = SLDConfig(guidance_scale=1.0, warmup_steps=100, threshold=10.0, momentum_scale=0.0, momentum_beta=beta)
    unc, txt, con = random_branches(1, spread=0.1)[0]
    term = torch.clamp((txt - con).abs(), max=1.0) * (con - unc)
    momentum = None
    for n in range(1, 6):
        _, momentum = sld_guidance(unc, txt, con, step=n - 1, cfg_scale=2.0, config=cfg, momentum=momentum)
        assert torch.allclose(momentum, (1 - beta**n) * term, atol=1e-12)


def test_sld_zero_scale_is_plain_cfg_exactly():
    cfg = SLDConfig(guidance_scale=0.0, warmup_steps=0)
    momentum = None
    for step, (unc, txt, con) in enumerate(random_branches(4, shape=(2, 4, 5, 5))):
        unc, txt, con = unc.float(), txt.float(), con.float()
        guided, momentum = sld_guidance(unc, txt, con, step=step, cfg_scale=7.5, config=cfg, momentum=momentum)
        assert torch.equal(guided, unc + 7.5 * (txt - unc))
    assert not cfg.enabled


def test_sld_bad_input():
    unc = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="one shape"):
        sld_guidance(unc, unc, torch.zeros(2, 1, 4, 3), step=0, cfg_scale=2.0, config=SLDConfig())
    with pytest.raises(ValueError, match="momentum"):
        sld_guidance(unc, unc, unc, step=0, cfg_scale=2.0, config=SLDConfig(), momentum=torch.zeros(3))
    with pytest.raises(ValueError, match="step"):
        sld_guidance(unc, unc, unc, step=-1, cfg_scale=2.0, config=SLDConfig())
    for bad in ({"guidance_scale": -1.0}, {"guidance_scale": math.inf}, {"warmup_steps": 1.5}, {"threshold": math.nan},
                {"momentum_scale": -0.1}, {"momentum_beta": 1.5}, {"concept": " "}):
        with pytest.raises(ValueError):
            SLDConfig(**bad)
    with pytest.raises(ValueError, match="preset"):
        SLDConfig.preset("extreme")


# ---------------------------------------------------------------- SAFREE

DIM = 48


def pinv_projector(rows):
    """SAFREE's projection_matrix: E (E^T E)^+ E^T with the vectors as columns of E."""
    e = rows.T.double()
    return e @ torch.linalg.pinv(e.T @ e) @ e.T


def safree_reference(prompt, mask, concepts, alpha):
    """One prompt (L, D), written the way SAFREE's code does: loops over tokens, pinv projectors."""
    idx = [i for i in range(prompt.shape[0]) if mask[i]]
    tokens = prompt.double()
    loo = torch.stack([(tokens[idx].sum(0) - tokens[i]) / (len(idx) - 1) for i in idx])
    p_c, p_i = pinv_projector(concepts), pinv_projector(loo)
    eye = torch.eye(prompt.shape[1], dtype=torch.float64)
    dist = torch.linalg.norm((eye - p_c) @ loo.T, dim=0)
    trigger = torch.zeros(prompt.shape[0], dtype=torch.bool)
    for k, i in enumerate(idx):
        others = torch.mean(torch.cat([dist[:k], dist[k + 1:]]))
        trigger[i] = not bool(dist[k] < (1 + alpha) * others)
    projected = ((eye - p_c) @ p_i @ tokens.T).T
    cos = torch.nn.functional.cosine_similarity(projected[idx], tokens[idx], dim=-1).mean()
    return trigger, projected, 1 - cos


@pytest.fixture(scope="module")
def text_setup():
    gen = torch.Generator().manual_seed(3)
    concepts = torch.randn(3, DIM, generator=gen)
    prompts = torch.randn(3, 8, DIM, generator=gen)
    prompts[0, 2] = concepts[0] * 1.5
    prompts[2, 5] = concepts[1] + 0.2 * concepts[2]
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 6:] = False
    return prompts, concepts, mask


@pytest.mark.parametrize("alpha", [0.01, 0.1])
def test_safree_matches_loop_and_pinv_reference(text_setup, alpha):
    prompts, concepts, mask = text_setup
    res = safree_embeddings(prompts, concepts, SafreeConfig(alpha=alpha), token_mask=mask)
    for b in range(prompts.shape[0]):
        trigger, projected, beta = safree_reference(prompts[b], mask[b], concepts, alpha)
        assert torch.equal(res.diagnostics["trigger"][b], trigger)
        want = torch.where(trigger[:, None], projected.float(), prompts[b])
        assert torch.allclose(res.embeds[b], want, atol=1e-5)
        assert torch.allclose(res.diagnostics["beta"][b], beta, atol=1e-10)
    assert int(res.diagnostics["concept_rank"]) == 3


def test_safree_projected_tokens_orthogonal_to_concept_subspace(text_setup):
    prompts, concepts, mask = text_setup
    res = safree_embeddings(prompts, concepts, token_mask=mask)
    trig = res.diagnostics["trigger"]
    assert trig.any()
    along = res.embeds[trig].double() @ pinv_projector(concepts)
    assert along.norm(dim=-1).max() < 1e-5 * res.embeds[trig].norm(dim=-1).max()


def test_safree_token_equal_to_concept_is_removed(text_setup):
    prompts, concepts, mask = text_setup
    res = safree_embeddings(prompts, concepts, token_mask=mask)
    assert res.diagnostics["trigger"][0, 2] and res.diagnostics["trigger"][2, 5]
    assert res.diagnostics["distance"][0, 2] == res.diagnostics["distance"][0].max()
    cos = torch.nn.functional.cosine_similarity(res.embeds[0, 2:3], concepts, dim=-1)
    assert cos.abs().max() < 1e-5


def test_safree_prompt_without_concept_tokens_is_unchanged():
    gen = torch.Generator().manual_seed(5)
    concepts = torch.randn(2, DIM, generator=gen)
    q, _ = torch.linalg.qr(torch.cat([concepts.T, torch.randn(DIM, 6, generator=gen)], 1))
    prompt = (3.0 * q[:, 2:8].T)[None]  # six orthogonal tokens of one norm, all orthogonal to the concepts
    res = safree_embeddings(prompt, concepts)
    assert torch.equal(res.embeds, prompt) and int(res.diagnostics["n_triggers"][0]) == 0
    random_prompt = torch.randn(2, 8, DIM, generator=gen)
    res = safree_embeddings(random_prompt, concepts, SafreeConfig(alpha=1.0))
    assert torch.equal(res.embeds, random_prompt)


def test_safree_self_validating_filter(text_setup):
    prompts, concepts, mask = text_setup
    cfg = SafreeConfig(max_fraction=0.2, filter_slope=2.5, filter_midpoint=0.5)
    res = safree_embeddings(prompts, concepts, cfg, token_mask=mask)
    for b in range(prompts.shape[0]):
        beta = float(safree_reference(prompts[b], mask[b], concepts, cfg.alpha)[2])
        up_t = round(10 / (1 + math.exp(-2 * 2.5 * (10 * beta - 0.5))))  # SAFREE's f_beta with up_t = 10
        assert math.isclose(float(res.steps_fraction[b]), 0.2 / (1 + math.exp(-5 * (10 * beta - 0.5))), rel_tol=1e-9)
        steps = safree_step_mask(res.steps_fraction, 50)[:, b]
        assert steps.tolist() == [i <= up_t for i in range(50)]
    off = safree_embeddings(prompts, concepts, SafreeConfig(self_validating=False), token_mask=mask)
    assert torch.equal(off.embeds, res.embeds) and bool(safree_step_mask(off.steps_fraction, 8).all())


def test_safree_concept_tokens_and_explicit_leave_one_out(text_setup):
    prompts, concepts, mask = text_setup
    tokens = torch.stack([concepts, 2 * concepts, torch.randn(3, DIM)], 1)  # (K, 3, D); the last token is masked
    cmask = torch.tensor([[True, True, False]] * 3)
    pooled = safree_embeddings(prompts, tokens, token_mask=mask, concept_mask=cmask)
    direct = safree_embeddings(prompts, 1.5 * concepts, token_mask=mask)
    assert torch.allclose(pooled.embeds, direct.embeds, atol=1e-6)
    maskf = mask.double()[..., None]
    loo = ((prompts.double() * maskf).sum(1, keepdim=True) - prompts.double()) / (maskf.sum(1, keepdim=True) - 1)
    explicit = safree_embeddings(prompts, concepts, token_mask=mask, leave_one_out=loo.float())
    assert torch.equal(explicit.diagnostics["trigger"], direct.diagnostics["trigger"])
    assert torch.allclose(explicit.embeds, direct.embeds, atol=1e-5)


def test_safree_bad_input(text_setup):
    prompts, concepts, _ = text_setup
    with pytest.raises(ValueError, match="dimension"):
        safree_embeddings(prompts, torch.randn(2, DIM + 1))
    with pytest.raises(ValueError, match="at least one concept"):
        safree_embeddings(prompts, torch.randn(0, DIM))
    with pytest.raises(ValueError, match="NaN"):
        safree_embeddings(prompts.clone().index_fill_(1, torch.tensor([0]), math.nan), concepts)
    with pytest.raises(ValueError, match="NaN"):
        safree_embeddings(prompts, concepts.clone().fill_(math.nan))
    with pytest.raises(ValueError, match=r"\(B, L, D\)"):
        safree_embeddings(prompts[0], concepts)
    with pytest.raises(ValueError, match="token_mask"):
        safree_embeddings(prompts, concepts, token_mask=torch.ones(3, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="no token"):
        safree_embeddings(prompts, concepts, token_mask=torch.zeros(3, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="span no subspace"):
        safree_embeddings(prompts, torch.zeros(2, DIM))
    with pytest.raises(ValueError, match="alpha"):
        SafreeConfig(alpha=-1.0)
    with pytest.raises(ValueError, match="max_fraction"):
        SafreeConfig(max_fraction=1.5)
    with pytest.raises(ValueError, match="num_steps"):
        safree_step_mask(torch.ones(2), 0)


# ---------------------------------------------------------------- SGF kernel repulsion

def sgf_reference(x0, items, scale, ranks=(4, 6), per_sample=False):
    """Brute force in float64: every distance, a full sort, an explicit sum over items."""
    x0, items = x0.double(), items.double()
    sq = ((x0[:, None, :] - items[None, :, :]) ** 2).sum(-1)  # (B, N): fine at this size
    r2 = sq.sort(1).values[:, ranks[0] - 1 : ranks[1]].mean(1)
    if not per_sample:
        r2 = r2.mean().expand_as(r2)
    gamma = -math.log(0.05) / r2
    k = torch.exp(-gamma[:, None] * sq)
    return x0 + scale * (k[:, :, None] * (x0[:, None, :] - items[None, :, :])).sum(1)


@pytest.fixture(scope="module")
def sgf_setup():
    gen = torch.Generator().manual_seed(7)
    items = torch.randn(300, 20, generator=gen, dtype=torch.float64)
    x0 = items[:6] + 0.5 * torch.randn(6, 20, generator=gen, dtype=torch.float64)
    return NegationSet(items), x0


@pytest.mark.parametrize("bandwidth", ["batch", "sample"])
def test_sgf_matches_brute_force(sgf_setup, bandwidth):
    negation, x0 = sgf_setup
    got = KernelRepulsion(negation, scale=0.5, bandwidth=bandwidth)(x0, 1.0, x0)
    want = sgf_reference(x0, negation.flat, 0.5, per_sample=bandwidth == "sample")
    assert torch.allclose(got, want, atol=1e-10)
    got32 = KernelRepulsion(negation.to(dtype=torch.float32), scale=0.5, bandwidth=bandwidth, ranks=(2, 3))(
        x0.float(), 1.0, x0.float())
    assert torch.allclose(got32.double(), sgf_reference(x0, negation.flat, 0.5, (2, 3), bandwidth == "sample"),
                          atol=1e-4)


def test_sgf_moves_away_and_reports(sgf_setup):
    negation, x0 = sgf_setup
    seen = []
    out = KernelRepulsion(negation, scale=0.5, callback=seen.append)(x0, 1.0, x0)
    nearest = lambda z: torch.cdist(z, negation.flat).min(1).values  # noqa: E731
    assert (nearest(out) > nearest(x0)).all()
    diag = seen[0]
    assert diag["active"].all()
    assert set(diag) >= {"weight", "log_kernel_mass", "gamma", "max_kernel_weight", "shift_norm"}
    assert torch.allclose(diag["shift_norm"], (out - x0).norm(dim=1))


def test_sgf_zero_scale_and_window_are_bit_identical(sgf_setup):
    negation, x0 = sgf_setup
    assert KernelRepulsion(negation, scale=0.0)(x0, 1.0, x0) is x0
    corr = KernelRepulsion(negation, scale=0.5, window=Window(2.0, 5.0))
    sigma = torch.tensor([1.0, 3.0, 1.0, 3.0, 1.0, 1.0], dtype=torch.float64)
    out = corr(x0, sigma, x0)
    assert torch.equal(out[sigma < 2], x0[sigma < 2]) and not torch.equal(out[sigma > 2], x0[sigma > 2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sgf_finite_at_tiny_and_huge_distances(dtype):
    gen = torch.Generator().manual_seed(11)
    items = torch.cat([torch.ones(8, 10), torch.randn(40, 10, generator=gen)]).to(dtype)  # 8 duplicates
    tol = {"rtol": 1e-3, "atol": 1e-3} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}
    on_top = torch.ones(3, 10, dtype=dtype)  # r^2 = 0: the duplicates are the 4th-6th neighbours
    far = torch.cat([items[8:10] + 1e-3, torch.full((2, 10), 1e6, dtype=dtype)])
    for bandwidth in ("batch", "sample"):
        corr = KernelRepulsion(NegationSet(items), scale=1.0, bandwidth=bandwidth)
        assert torch.isfinite(corr(on_top, 1.0, on_top)).all()
        out = corr(far, 1.0, far)
        want = sgf_reference(far, items, 1.0, per_sample=bandwidth == "sample")
        assert torch.isfinite(out).all() and torch.allclose(out.double(), want, **tol)
        tiny = 1e-12 * torch.randn(4, 10, generator=gen).to(dtype)
        out = KernelRepulsion(NegationSet(1e-12 * items), scale=1.0, bandwidth=bandwidth)(tiny, 1.0, tiny)
        assert torch.isfinite(out).all()


def test_sgf_bad_knobs(sgf_setup):
    negation, _ = sgf_setup
    with pytest.raises(ValueError, match="negation set has"):
        KernelRepulsion(NegationSet(torch.randn(5, 3)), ranks=(4, 6))
    with pytest.raises(ValueError, match="ranks"):
        KernelRepulsion(negation, ranks=(3, 2))
    with pytest.raises(ValueError, match="bandwidth"):
        KernelRepulsion(negation, bandwidth="median")
    with pytest.raises(ValueError, match="scale"):
        KernelRepulsion(negation, scale=math.nan)


def test_safree_leave_one_out_embeddings_reencodes_each_token():
    gen = torch.Generator().manual_seed(2)
    table = torch.randn(20, DIM, generator=gen)
    encode = lambda ids: table[ids].mean(1)  # noqa: E731  a toy pooled encoder
    ids = torch.randint(1, 20, (2, 5), generator=gen)
    mask = torch.tensor([[True, True, True, False, False], [False, True, True, True, True]])
    loo = leave_one_out_embeddings(encode, ids, mask, replacement_id=0)
    for b in range(2):
        for i in range(5):
            masked = ids[b].clone()
            masked[i] = 0
            want = table[masked].mean(0) if mask[b, i] else torch.zeros(DIM)
            assert torch.allclose(loo[b, i], want, atol=1e-6)
    with pytest.raises(ValueError, match="pooled"):
        leave_one_out_embeddings(lambda x: table[x], ids, mask, 0)
