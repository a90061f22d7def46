"""Kernel moments from the k nearest negation items only, with the left-out kernel mass bounded and reported.

Retrieval uses faiss (Johnson, Douze, Jegou 2017, "Billion-scale similarity search with GPUs"): an IVF index
(``"IVF{nlist},SQ8"``, or any faiss factory string) for speed, or ``"exact"`` (the streamed exact search of
:func:`safedenoiser.kernels.nearest_neighbours`, no faiss) when a guaranteed bound matters more than speed.

Bound (Gaussian or plain-distance kernel, logits decrease with distance): if the retrieved set R holds the
|R| = k nearest items, every left-out item has logit l_n <= l_min = min_{m in R} l_m, so

    left-out mass <= (N - k) exp(l_min),      rel = (N - k) exp(l_min) / sum_{m in R} exp(l_m),

so the true log-mass lies in [log_mass_R, log_mass_R + log1p(rel)] and the kernel mean moves by at most
|E - E_R| <= rel / (1 + rel) * max_n |x_n - E_R| <= rel * (max_n |x_n| + |E_R|). The bound is exact for
``"exact"`` retrieval; with an approximate index it holds when the index returned the true k nearest
(``TopKMoments.guaranteed`` says which). Rows whose ``rel`` exceeds the tolerance are retried with a larger
k and finally computed by the exact streamed pass over the whole set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..kernels import Distance, KernelMoments, auto_chunk_size, batch_sigma, compute_dtype, nearest_neighbours
from ..negation import NegationSet


RETRIEVED_ROWS = 1 << 16  # retrieved items gathered at once (queries x k), bounding the (g, k, D) gather


class TopKError(ValueError):
    """Bad top-k settings (k, tolerance, index specification) or an index that does not match its set."""


@dataclass
class TopKMoments(KernelMoments):
    """:class:`KernelMoments` from the retrieved items, with the truncation error.

    ``rel_bound`` (B,): bound on left-out mass / retrieved mass (0 for rows computed exactly);
    ``mean_bound`` (B,): bound on |E_unsafe - mean| in the data's units; ``exact`` (B,) bool: row computed by
    the full pass; ``k`` (B,): items in the kernel (N for exact rows); ``guaranteed``: the bounds are rigorous
    (exact retrieval), not conditional on the index having found the true nearest items.
    """

    rel_bound: Tensor
    mean_bound: Tensor
    exact: Tensor
    k: Tensor
    guaranteed: bool


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise TopKError("top-k retrieval with an index needs faiss: pip install 'safedenoiser[scale]' (faiss-cpu)") from err
    return faiss


class TopKKernel:
    """Kernel moments of a :class:`NegationSet` restricted to each query's k nearest items.

    ``index``: ``"exact"`` (streamed exact k-NN, rigorous bound, one pass over the set), ``"ivf"`` (faiss
    ``IVF{nlist},SQ8`` with ``nlist`` ~ sqrt(N) lists, ``nprobe`` probed: vectors stored as 8-bit codes, a quarter
    of the bytes to scan and to hold; only retrieval uses them, the kernel is recomputed from the set), or any
    faiss factory string (``"IVF{nlist},Flat"`` keeps float32 vectors).
    The index is trained on ``train_size`` random items and filled chunk by chunk (the set may be
    memory-mapped; faiss keeps its own copy of the vectors in the index's format).
    """

    def __init__(self, negation: NegationSet, index: str = "ivf", *, nlist: int | None = None, nprobe: int = 16,
                 train_size: int | None = None, seed: int = 0, progress: bool = True):
        if not isinstance(negation, NegationSet):
            raise TopKError(f"negation must be a NegationSet, got {type(negation).__name__}")
        if nprobe < 1:
            raise TopKError(f"nprobe must be >= 1, got {nprobe}")
        self.negation = negation
        self.kind = index
        self.index = None
        if index == "exact":
            return
        faiss = _faiss()
        count, dim = len(negation), negation.dim
        nlist = nlist or max(1, min(count // 39, int(round(math.sqrt(count)))))
        spec = f"IVF{nlist},SQ8" if index == "ivf" else index
        try:
            self.index = faiss.index_factory(dim, spec, faiss.METRIC_L2)
        except RuntimeError as err:
            raise TopKError(f"faiss cannot build index {spec!r}: {str(err).splitlines()[0]}") from err
        self.spec = spec
        flat = negation.flat
        if not self.index.is_trained:
            size = min(count, train_size or max(64 * nlist, 10_000))
            rows = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size].sort().values
            self.index.train(np.ascontiguousarray(flat[rows].float().numpy()))
        step = max(auto_chunk_size(dim) * 16, 1)
        for start in tqdm(range(0, count, step), desc="faiss index", disable=not progress or count <= step, leave=False):
            self.index.add(np.ascontiguousarray(flat[start : start + step].float().numpy()))
        self.set_nprobe(nprobe)

    def set_nprobe(self, nprobe: int) -> None:
        """Inverted lists probed per query (IVF indexes): more is slower and retrieves more of the true nearest."""
        if self.index is not None:
            try:
                _faiss().ParameterSpace().set_index_parameter(self.index, "nprobe", int(nprobe))
            except RuntimeError:
                pass  # an index without inverted lists (HNSW, flat) has no nprobe
        self.nprobe = nprobe

    @property
    def guaranteed(self) -> bool:
        """Whether retrieval is exact, which makes the reported bounds rigorous."""
        return self.index is None

    def search(self, x: Tensor, k: int) -> Tensor:
        """Indices (B, k) of the (approximately, for an index) k nearest items; -1 where fewer were found."""
        if self.index is None:
            return nearest_neighbours(x, self.negation.flat, k)[1]
        _, idx = self.index.search(np.ascontiguousarray(x.detach().float().cpu().numpy()), k)
        return torch.from_numpy(idx)

    def moments(self, x: Tensor, bandwidth: Tensor | float, *, k: int = 256, tolerance: float = 1e-3,
                distance: Distance = "squared", max_k: int | None = None, growth: int = 4,
                dtype: torch.dtype | None = None) -> TopKMoments:
        """Moments at queries ``x`` (B, D) from the k nearest items, k grown by ``growth`` up to ``max_k`` (default
        16 k) while the relative left-out mass bound exceeds ``tolerance``, then the exact pass."""
        count = len(self.negation)
        if x.ndim != 2 or x.shape[1] != self.negation.dim:
            raise TopKError(f"queries must be (B, {self.negation.dim}), got {tuple(x.shape)}")
        if not 1 <= k:
            raise TopKError(f"k must be >= 1, got {k}")
        if not tolerance >= 0:
            raise TopKError(f"tolerance must be >= 0, got {tolerance}")
        if growth < 2:
            raise TopKError(f"growth must be >= 2, got {growth}")
        if distance not in ("squared", "euclidean"):
            raise TopKError(f"unknown distance {distance!r}; expected 'squared' or 'euclidean'")
        dtype = dtype or self.negation.compute_dtype or compute_dtype(x.dtype, self.negation.dtype)
        batch = x.shape[0]
        xs = x.to(dtype)
        band = batch_sigma(bandwidth, batch, dtype, x.device)
        max_k = min(count, max_k or 16 * k)
        device = x.device
        radius = self.negation.squared_norms(dtype).max().sqrt().to(device)
        log_mass = torch.empty(batch, dtype=dtype, device=device)
        max_logit = torch.empty(batch, dtype=dtype, device=device)
        mean = torch.empty(batch, x.shape[1], dtype=dtype, device=device)
        rel = torch.zeros(batch, dtype=dtype, device=device)
        used = torch.full((batch,), count, dtype=torch.long)
        todo = torch.arange(batch)
        k = min(k, count)
        while todo.numel() and k < count:
            idx_all = self.search(xs[todo], k).to(self.negation.device)  # (b, k), -1 where fewer were found
            for group in torch.arange(todo.numel()).split(max(1, RETRIEVED_ROWS // k)):
                b, idx = todo[group], idx_all[group.to(idx_all.device)]
                rows = self.negation.flat[idx.clamp_min(0)].to(device=device, dtype=dtype)  # (g, k, D)
                found = idx >= 0
                lm, mu, top, bound = _retrieved_moments(xs[b], rows, found.to(device), band[b], count, distance)
                log_mass[b], mean[b], max_logit[b], rel[b] = lm, mu, top, bound
                used[b] = found.sum(1).cpu()
            done = (rel[todo] <= tolerance).cpu()
            todo = todo[~done]
            if k >= max_k:
                break
            k = min(max_k, k * growth)
        exact = torch.zeros(batch, dtype=torch.bool, device=device)
        if todo.numel():
            full = self.negation.moments(xs[todo], band[todo], distance=distance, dtype=dtype)
            log_mass[todo], mean[todo], max_logit[todo] = full.log_mass, full.mean, full.max_logit
            rel[todo], used[todo], exact[todo] = 0.0, count, True
        mean_bound = rel * (radius + mean.norm(dim=1))
        return TopKMoments(log_mass=log_mass, mean=mean, max_logit=max_logit, rel_bound=rel, mean_bound=mean_bound,
                           exact=exact, k=used, guaranteed=self.guaranteed)


def _retrieved_moments(x: Tensor, rows: Tensor, found: Tensor, band: Tensor, count: int, distance: Distance):
    """log-mass, mean and max logit (b,) of the retrieved rows (b, k, D) at queries x (b, D), where ``found``
    (b, k) marks real retrievals, and the bound (N - k) exp(l_min) / sum exp(l) on the left-out mass
    (explicit differences: exact even for tiny bandwidths; b x k x D is the retrieved set, not the whole set)."""
    sq = (rows - x[:, None, :]).square_().sum(2)  # (b, k)
    logits = -(sq if distance == "squared" else sq.sqrt()) / (2 * band * band)[:, None]
    logits = logits.masked_fill(~found, -math.inf)
    log_mass = torch.logsumexp(logits, 1)
    mean = torch.einsum("bk,bkd->bd", torch.softmax(logits, 1), rows)
    left = (count - found.sum(1)).to(x.dtype)
    smallest = logits.masked_fill(~found, math.inf).amin(1)
    bound = torch.where(left > 0, torch.exp(torch.log(left) + smallest - log_mass), torch.zeros_like(left))
    return log_mass, mean, logits.amax(1), bound
