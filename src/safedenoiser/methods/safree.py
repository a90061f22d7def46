"""SAFREE's training-free text side (Yoon et al., ICLR 2025, arXiv 2410.12761; code github jaehong31/SAFREE) on
plain tensors, so that any pipeline that accepts ``prompt_embeds`` can use it.

For one prompt with token embeddings e_1..e_L (the text encoder's last hidden states) and concept prompts with
pooled embeddings c_1..c_K (all in the same D-dimensional space):

1. Concept subspace C = span(c_k); P_C its orthogonal projector (SAFREE: ``E (E^T E)^+ E^T``).
2. Trigger tokens. p_i is the pooled embedding of the prompt with token i left out; its distance to C is
   d_i = |(I - P_C) p_i|. Leaving out a concept token moves the prompt away from C, so token i is a trigger when
   d_i >= (1 + alpha) * mean_{j != i} d_j (SAFREE ``safree_projection``; ``alpha`` = ``--sf_alpha``, default 0.01).
3. Trigger tokens are replaced by (I - P_C) P_I e_i, where P_I projects onto the prompt's own input space
   span(p_i): the concept direction is removed while staying among the prompt's embeddings. Other tokens are
   returned bit-identical.
4. Self-validating filter: beta = 1 - mean_i cos(e_i, (I - P_C) P_I e_i) over the prompt's tokens; the projected
   embeddings are used at the sampling steps i <= round(U * sigmoid(2 k (10 beta - t))) (SAFREE ``f_beta``:
   U = ``--up_t`` = 10 of 50 steps, k = 2.5, t = 5.333; k = 3.5, t = 5.5 for artists). Here U is a fraction of
   the steps (``max_fraction`` = 10/50) so that the rule carries over to other step counts.

Differences from the authors' code: SAFREE re-encodes the prompt once per masked token and uses CLIP's pooled
output for p_i and c_k. :func:`leave_one_out_embeddings` does that with any encoder callable; without an encoder,
p_i defaults to the mean of the remaining token embeddings (a cruder approximation).
Not implemented: SAFREE's image side (latent re-attention, ``-lra``: Fourier-domain filtering
of UNet features), which needs a modified UNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class SafreeConfig:
    """``alpha`` (> -1): trigger threshold, token i is a trigger when d_i >= (1 + alpha) mean_{j != i} d_j
    (SAFREE default 0.01). ``self_validating``: use the self-validating filter (SAFREE ``-svf``, on in its
    scripts); without it the projected embeddings are used at every step (SAFREE's ``re_attn_t`` default).
    ``max_fraction`` U in [0, 1]: the filter's upper bound on the fraction of steps (SAFREE up_t / steps = 10/50).
    ``filter_slope`` k > 0 and ``filter_midpoint`` t: the filter's sigmoid(2 k (10 beta - t)) (SAFREE 2.5 and
    5.333; 3.5 and 5.5 for artist concepts)."""

    alpha: float = 0.01
    self_validating: bool = True
    max_fraction: float = 0.2
    filter_slope: float = 2.5
    filter_midpoint: float = 5.333

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha > -1):
            raise ValueError(f"SAFREE alpha must be a finite number > -1, got {self.alpha}")
        if not 0 <= self.max_fraction <= 1:
            raise ValueError(f"SAFREE max_fraction must lie in [0, 1], got {self.max_fraction}")
        if not (math.isfinite(self.filter_slope) and self.filter_slope > 0):
            raise ValueError(f"SAFREE filter_slope must be a finite number > 0, got {self.filter_slope}")
        if not math.isfinite(self.filter_midpoint):
            raise ValueError(f"SAFREE filter_midpoint must be finite, got {self.filter_midpoint}")


class SafreeResult(NamedTuple):
    """``embeds`` (B, L, D): the prompt embeddings with trigger tokens projected (input dtype); ``steps_fraction``
    (B,): the fraction of sampling steps, from the first, that use ``embeds`` (see :func:`safree_step_mask`);
    ``diagnostics``: ``trigger`` (B, L) bool, ``distance`` (B, L) d_i (0 outside ``token_mask``), ``n_triggers``
    (B,), ``cosine`` (B,) mean cos(e_i, projected e_i), ``beta`` (B,) = 1 - cosine, ``concept_rank`` () dim C."""

    embeds: Tensor
    steps_fraction: Tensor
    diagnostics: dict[str, Tensor]


def _check_finite(name: str, value: Tensor) -> None:
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_mask(name: str, mask: Tensor | None, shape: tuple[int, ...], device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
    return mask.to(device=device).bool()


def mean_pool(embeds: Tensor, mask: Tensor | None = None) -> Tensor:
    """Masked mean over tokens: (..., L, D), mask (..., L) -> (..., D) (the sentence embedding of MiniLM-like
    encoders)."""
    mask = torch.ones(embeds.shape[:-1], dtype=torch.bool, device=embeds.device) if mask is None else mask.bool()
    weights = mask.to(embeds.dtype)
    count = weights.sum(-1, keepdim=True)
    if bool((count == 0).any()):
        raise ValueError("mean_pool: a sequence has no token in its mask")
    return (weights[..., None] * embeds).sum(-2) / count


def orthonormal_basis(vectors: Tensor) -> tuple[Tensor, Tensor]:
    """Orthonormal rows spanning the rows of ``vectors`` (..., K, D): returns ``basis`` (..., R, D) with
    R = min(K, D), and ``keep`` (..., R) bool marking the rows inside the span (singular values above the
    numerical-rank tolerance of ``torch.linalg.matrix_rank``); rows with ``keep`` False are zeroed."""
    _, singular, vh = torch.linalg.svd(vectors, full_matrices=False)
    tol = singular[..., :1] * max(vectors.shape[-2:]) * torch.finfo(vectors.dtype).eps
    keep = (singular > tol) & (singular > 0)
    return vh * keep[..., None].to(vh.dtype), keep


def _project(embeds: Tensor, basis: Tensor) -> Tensor:
    """Projection of (B, L, D) onto the span of orthonormal rows ``basis`` (B, R, D) or (R, D)."""
    coeffs = embeds @ basis.transpose(-1, -2)
    return coeffs @ basis


@torch.no_grad()
def leave_one_out_embeddings(encode: Callable[[Tensor], Tensor], input_ids: Tensor, token_mask: Tensor,
                             replacement_id: int) -> Tensor:
    """SAFREE's p_i: ``encode`` (a pooled text embedding (B', D) of token ids (B', L)) of each prompt with token i
    replaced by ``replacement_id``, for every i in ``token_mask`` (B, L); (B, L, D), zero outside the mask.

    One encoder call per token position. SAFREE: CLIP's pooled output with id 0; for a mean-pooled encoder such
    as MiniLM: the attention-masked mean of the last hidden states with the [MASK] id."""
    if input_ids.ndim != 2 or tuple(token_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"input_ids and token_mask must both be (B, L); got {tuple(input_ids.shape)}, "
                         f"{tuple(token_mask.shape)}")
    mask = token_mask.to(input_ids.device).bool()
    out = None
    for i in range(input_ids.shape[1]):
        rows = mask[:, i].nonzero().flatten()
        if rows.numel() == 0:
            continue
        ids = input_ids[rows].clone()
        ids[:, i] = replacement_id
        pooled = encode(ids)
        if pooled.ndim != 2 or pooled.shape[0] != rows.numel():
            raise ValueError(f"encode must return pooled embeddings ({rows.numel()}, D), got {tuple(pooled.shape)}")
        if out is None:
            out = pooled.new_zeros(*input_ids.shape, pooled.shape[1])
        out[rows, i] = pooled
    if out is None:
        raise ValueError("token_mask selects no token")
    return out


def safree_embeddings(prompt_embeds: Tensor, concept_embeds: Tensor, config: SafreeConfig | None = None, *,
                      token_mask: Tensor | None = None, concept_mask: Tensor | None = None,
                      leave_one_out: Tensor | None = None) -> SafreeResult:
    """SAFREE's token projection and self-validating filter (module docstring, steps 1-4).

    ``prompt_embeds`` (B, L, D): the prompts' token embeddings (what a pipeline takes as ``prompt_embeds``).
    ``concept_embeds``: one pooled embedding per concept prompt (K, D), or token embeddings (K, Lc, D) that are
    mean-pooled over ``concept_mask`` (K, Lc). ``token_mask`` (B, L): the tokens that may be triggers and enter
    the leave-one-out pooling and the filter (pass the tokenizer's attention mask; default every position).
    ``leave_one_out`` (B, L, D): p_i, the pooled embedding of each prompt re-encoded without token i (SAFREE's
    construction, see :func:`leave_one_out_embeddings`; recommended: on MiniLM it flags the concept words where the
    default does not, see docs/t2i-baselines.md); default, without an encoder, the approximation
    (sum_{j in mask} e_j - e_i) / (n - 1). A prompt with a single candidate token has no "other tokens": that
    token is a trigger, as in SAFREE's code.
    Computed in float64; bad shapes, an empty concept list or non-finite values raise ``ValueError``.
    """
    config = config or SafreeConfig()
    if prompt_embeds.ndim != 3:
        raise ValueError(f"prompt_embeds must have shape (B, L, D), got {tuple(prompt_embeds.shape)}")
    if concept_embeds.ndim not in (2, 3):
        raise ValueError(f"concept_embeds must have shape (K, D) or (K, L, D), got {tuple(concept_embeds.shape)}")
    batch, length, dim = prompt_embeds.shape
    if concept_embeds.shape[0] == 0:
        raise ValueError("SAFREE needs at least one concept prompt (concept_embeds is empty)")
    if concept_embeds.shape[-1] != dim:
        raise ValueError(f"concept embeddings have dimension {concept_embeds.shape[-1]} but prompt embeddings {dim}")
    _check_finite("prompt_embeds", prompt_embeds)
    _check_finite("concept_embeds", concept_embeds)
    device = prompt_embeds.device
    mask = _check_mask("token_mask", token_mask, (batch, length), device)
    if not bool(mask.any(1).all()):
        raise ValueError("token_mask selects no token for some prompt")
    dtype = torch.float64
    e = prompt_embeds.to(dtype)
    concepts = concept_embeds.to(device=device, dtype=dtype)
    if concepts.ndim == 3:
        concepts = mean_pool(concepts, _check_mask("concept_mask", concept_mask, concepts.shape[:2], device))
    elif concept_mask is not None:
        raise ValueError("concept_mask applies only to concept token embeddings (K, L, D)")
    concept_basis, concept_keep = orthonormal_basis(concepts)
    if not bool(concept_keep.any()):
        raise ValueError("the concept embeddings are all zero: they span no subspace")

    maskf = mask.to(dtype)
    count = maskf.sum(1)  # (B,)
    if leave_one_out is None:
        total = (maskf[..., None] * e).sum(1, keepdim=True)
        loo = (total - e) / (count - 1).clamp_min(1)[:, None, None]
    else:
        if tuple(leave_one_out.shape) != (batch, length, dim):
            raise ValueError(f"leave_one_out must have shape {(batch, length, dim)}, got {tuple(leave_one_out.shape)}")
        _check_finite("leave_one_out", leave_one_out)
        loo = leave_one_out.to(device=device, dtype=dtype)
    loo = loo * maskf[..., None]
    distance = (loo - _project(loo, concept_basis)).norm(dim=-1) * maskf  # (B, L), d_i
    others = (distance.sum(1, keepdim=True) - distance) / (count - 1).clamp_min(1)[:, None]
    single = (count == 1)[:, None]
    trigger = mask & (single | (distance >= (1 + config.alpha) * others))

    input_basis, _ = orthonormal_basis(loo)  # span of the p_i (B, R, D)
    in_space = _project(e, input_basis)
    projected = in_space - _project(in_space, concept_basis)  # (I - P_C) P_I e
    out = torch.where(trigger[..., None], projected.to(prompt_embeds.dtype), prompt_embeds)

    cosine = torch.nn.functional.cosine_similarity(projected, e, dim=-1, eps=1e-12)
    mean_cos = (cosine * maskf).sum(1) / count
    beta = 1 - mean_cos
    if config.self_validating:
        fraction = config.max_fraction * torch.sigmoid(2 * config.filter_slope * (10 * beta - config.filter_midpoint))
    else:
        fraction = torch.ones_like(beta)
    diagnostics = {"trigger": trigger, "distance": distance.to(prompt_embeds.dtype), "n_triggers": trigger.sum(1),
                   "cosine": mean_cos, "beta": beta, "concept_rank": concept_keep.sum()}
    return SafreeResult(out, fraction, diagnostics)


def safree_step_mask(steps_fraction: Tensor, num_steps: int) -> Tensor:
    """(num_steps, B) bool: step i (0-based) uses the projected embeddings when i <= round(fraction * num_steps)
    (SAFREE's ``i <= f_beta(...)``; note step 0 always does, as in SAFREE, where a prompt without triggers is
    unchanged anyway). A fraction of 1 selects every step."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if steps_fraction.ndim != 1:
        raise ValueError(f"steps_fraction must have shape (B,), got {tuple(steps_fraction.shape)}")
    last = torch.round(steps_fraction.double() * num_steps)
    steps = torch.arange(num_steps, dtype=torch.float64, device=steps_fraction.device)
    return steps[:, None] <= last[None, :]
