"""Class-conditional Gaussian mixtures: exact conditional, guided and safe conditional denoisers (test oracles).

Components N(mu_k, s_k^2 I) (a :class:`GaussianMixture`); class c uses a subset of them with weights
``class_weights[c]`` (a row summing to one). The null condition is the marginal, with class prior ``class_prior``:
p(x0 | null) = sum_c prior_c p(x0 | c). Every conditional is a mixture, so E[x0 | x, c] is exact at every sigma
(:meth:`GaussianMixture.denoise`); classifier-free guidance is D_null + w (D_c - D_null).

With a set U of unsafe components the exact safe conditional p_safe(x0 | c) is class c restricted to its safe
components (weights renormalised); a class with no safe component is an *explicit request* (Z_s(c) = 0) with no
safe conditional: :meth:`safe_class` returns None and the caller compares with the target its method documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from .guidance import GuidedDenoiser
from .mixture import GaussianMixture


@dataclass
class ConditionalGaussianMixture:
    """``components`` (K components, their own weights unused), ``class_weights`` (C, K) rows summing to one,
    ``class_prior`` (C,) (default uniform), ``unsafe`` component indices."""

    components: GaussianMixture
    class_weights: Tensor
    unsafe: Sequence[int] = ()
    class_prior: Tensor | None = None
    _classes: list[GaussianMixture] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.class_weights = torch.as_tensor(self.class_weights, dtype=torch.float64)
        k = self.components.means.shape[0]
        if self.class_weights.ndim != 2 or self.class_weights.shape[1] != k:
            raise ValueError(f"class_weights must be (C, {k}), got {tuple(self.class_weights.shape)}")
        if (self.class_weights < 0).any() or not torch.allclose(self.class_weights.sum(1), torch.ones(1, dtype=torch.float64)):
            raise ValueError("every row of class_weights must be non-negative and sum to one")
        c = self.class_weights.shape[0]
        prior = torch.full((c,), 1.0 / c, dtype=torch.float64) if self.class_prior is None else self.class_prior
        self.class_prior = torch.as_tensor(prior, dtype=torch.float64)
        self.unsafe = sorted(int(u) for u in self.unsafe)
        self._classes = [self._mixture(w) for w in self.class_weights]

    def _mixture(self, weights: Tensor, keep: Sequence[int] | None = None) -> GaussianMixture:
        idx = [k for k in range(len(weights)) if weights[k] > 0 and (keep is None or k in keep)]
        w = weights[idx]
        return GaussianMixture(self.components.means[idx], self.components.stds[idx], w / w.sum())

    @property
    def num_classes(self) -> int:
        return self.class_weights.shape[0]

    @property
    def null_weights(self) -> Tensor:
        return self.class_prior @ self.class_weights

    @property
    def safe_components(self) -> list[int]:
        return [k for k in range(self.components.means.shape[0]) if k not in self.unsafe]

    def marginal(self) -> GaussianMixture:
        """p(x0 | null)."""
        return self._mixture(self.null_weights)

    def class_mixture(self, c: int) -> GaussianMixture:
        return self._classes[c]

    def safe_class(self, c: int) -> GaussianMixture | None:
        """Exact p_safe(x0 | c): class c on its safe components; None for an explicit request (no safe component)."""
        w = self.class_weights[c]
        if not any(w[k] > 0 for k in self.safe_components):
            return None
        return self._mixture(w, self.safe_components)

    def safe_marginal(self) -> GaussianMixture:
        """The allowed content of the null distribution: the marginal restricted to safe components."""
        return self._mixture(self.null_weights, self.safe_components)

    def denoise(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | int | None = None) -> Tensor:
        """Exact E[x0 | x, c] (B, D); ``class_labels`` None or -1 rows: the null condition (marginal)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        if class_labels is None:
            return self.marginal().denoise(x, sigma)
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).expand(x.shape[0])
        out = torch.empty_like(x)
        for c in labels.unique().tolist():
            rows = labels == c
            mix = self.marginal() if c < 0 else self._classes[c]
            out[rows] = mix.denoise(x[rows], sigma[rows])
        return out

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | int | None = None) -> Tensor:
        return self.denoise(x, sigma, class_labels)

    def guided(self, guidance: float) -> "GuidedMixtureDenoiser":
        return GuidedMixtureDenoiser(self, guidance)

    def sample(self, c: int | None, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Exact samples of p(x0 | c) (c None: the null condition) and their component indices (global numbering)."""
        weights = self.null_weights if c is None else self.class_weights[c]
        labels = torch.multinomial(weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.components.dim, dtype=torch.float64, generator=generator)
        return self.components.means[labels] + self.components.stds[labels, None] * noise, labels

    def component_of(self, x: Tensor) -> Tensor:
        """Most probable component (global numbering, equal weights) of clean samples x: the judge."""
        eq = GaussianMixture(self.components.means, self.components.stds,
                             torch.full((self.components.means.shape[0],), 1.0 / self.components.means.shape[0]))
        return eq.classify(x)


class GuidedMixtureDenoiser(GuidedDenoiser):
    """Classifier-free guidance on the exact mixture: D_null + w (D_c - D_null) (:mod:`.guidance`); w = 1 is the exact
    conditional, and so is the null request (its two branches are the same exact prediction)."""

    def __init__(self, model: ConditionalGaussianMixture, guidance: float):
        super().__init__(model.denoise, guidance)
        self.model = model

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | int | None = None) -> Tensor:
        return super().__call__(x, sigma, class_labels=class_labels)
