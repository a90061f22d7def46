"""beta*(x, sigma) from a fitted density ratio: a noise-conditional classifier of negation items against model samples.

beta*(x, sigma) = pi_u p_unsafe,sigma(x) / (pi_s p_safe,sigma(x)) is a density ratio, and the logit of a classifier
trained with balanced classes to tell noised samples of two densities apart estimates the log of their ratio
(Bickel et al. 2009; Sugiyama et al., "Density Ratio Estimation in Machine Learning", 2012). The bank of the model's
own unguided samples is a sample of p_data = pi_u p_unsafe + pi_s p_safe, not of p_safe, so the fit has two stages:

1. **Labelling**: classifier A between the negation set and the bank, log-odds a(x, sigma) ~= log p_unsafe / p_data.
   exp(a) is 0 on safe content and 1 / pi_u >= 1 on negated content, but it is noisy there (both sets hold negated
   items), so A is trained and read at a coarser floor (:func:`label_sigma`: the noise level that blurs neighbouring
   negation items into each other) and a bank sample is *covered* where exp(a) >= ``label_cut`` (0.1) there; pi_u is
   the share covered. Cross-fitted: each
   half of the bank is labelled by a classifier that never saw it, so a network that memorises its training items
   does not label them safe.
2. **Ratio**: classifier B between (negation set + covered bank) and the safe bank, log-odds b ~= log p_unsafe /
   p_safe, so  log beta*(x, sigma) = b(x, sigma) + log(pi_u / (1 - pi_u)).  Both classes are pure, so b saturates
   where a sample has committed to either content instead of having to land on log(1 / pi_u) (stage 1's target).

The classifiers are small MLPs on x_sigma = x + sigma n (centred and scaled by 1 / sqrt(sigma_data^2 + sigma^2), EDM's
c_in) with FiLM conditioning on log sigma, trained with fresh noise at every step, sigma log-uniform over
[sigma_min, sigma_max]; below sigma_min (a floor, 0.05 by default) the classifier of sigma_min answers: trained with
less noise than the spacing of the items, it memorises them (measured: log-odds spread 11 instead of 1). They see
only the items (flattened images work as they are; no judge features). A fit is cached in memory (and optionally on
disk) under the content hashes of the negation set and the bank and the fit settings. Cost: three fits of
``steps`` Adam steps once per negation set and bank, then one MLP pass per denoiser call (less than a kernel pass).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import fileio
from ..coverage import covered_by_log_odds as covered_by  # stage 1's labels; the name this module has always had
from ..kernels import nearest_distances
from ..negation import NegationSet
from ..negation_file import content_hash
from .calibration import Calibration


NETS = ("mlp", "conv")


@dataclass(frozen=True)
class RatioFit:
    """Settings of one classifier fit (part of the cache key)."""

    sigma_min: float = 0.05  # sigma range of the training noise (log-uniform); below sigma_min the classifier of
    # sigma_min answers: with less noise than the spacing of the items it memorises them (measured)
    sigma_max: float = 80.0
    hidden: int = 128
    steps: int = 800  # Adam steps per classifier
    batch: int = 256  # items per class per step
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_cut: float = 0.1  # a bank sample is covered where stage 1's p_unsafe / p_data >= label_cut
    label_sigma: float | None = None  # stage 1's noise floor; None: max(sigma_min, median NN distance in the set / sqrt(D))
    seed: int = 0
    net: str = "mlp"  # "mlp" (:class:`RatioNet`) or "conv" (:class:`ConvRatioNet`; items must be (C, H, W) images)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma_min) and 0 < self.sigma_min < self.sigma_max and math.isfinite(self.sigma_max)):
            raise ValueError(f"ratio fit: need 0 < sigma_min < sigma_max (finite), got {self.sigma_min}, {self.sigma_max}")
        for name in ("hidden", "steps", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"ratio fit: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.label_cut < 1:
            raise ValueError(f"ratio fit: label_cut must be in (0, 1), got {self.label_cut}")
        if self.net not in NETS:
            raise ValueError(f"ratio fit: net must be one of {', '.join(NETS)}, got {self.net!r}")
        if not self.lr > 0:
            raise ValueError(f"ratio fit: lr must be > 0, got {self.lr}")
        if self.label_sigma is not None and not (math.isfinite(self.label_sigma) and 0 < self.label_sigma < self.sigma_max):
            raise ValueError(f"ratio fit: label_sigma must be in (0, sigma_max), got {self.label_sigma}")


class RatioNet(nn.Module):
    """logit(x, sigma) = MLP(c_in(sigma) (x - centre)) with FiLM on Fourier features of log sigma."""

    def __init__(self, dim: int, hidden: int, centre: Tensor, sigma_data: float, sigma_floor: float, frequencies: int = 8):
        super().__init__()
        self.register_buffer("sigma_floor", torch.tensor(float(sigma_floor)))
        self.register_buffer("centre", centre.reshape(1, dim).float().clone())
        self.register_buffer("sigma_data", torch.tensor(float(sigma_data)))
        self.register_buffer("freqs", 2.0 ** torch.arange(frequencies, dtype=torch.float32) / 8)
        self.embed = nn.Sequential(nn.Linear(2 * frequencies + 1, hidden), nn.SiLU(), nn.Linear(hidden, 4 * hidden))
        self.inp, self.mid, self.out = nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.float().clamp_min(float(self.sigma_floor))  # below the fitted range: its smallest level
        log_sigma = sigma.log()[:, None]
        phase = log_sigma * self.freqs
        film = self.embed(torch.cat([log_sigma, phase.sin(), phase.cos()], 1)).chunk(4, 1)
        c_in = torch.rsqrt(self.sigma_data**2 + sigma[:, None] ** 2)
        h = nn.functional.silu(self.inp((x.float() - self.centre) * c_in) * (1 + film[0]) + film[1])
        h = nn.functional.silu(self.mid(h) * (1 + film[2]) + film[3])
        return self.out(h)[:, 0]


class ConvRatioNet(nn.Module):
    """logit(x, sigma) = head(conv3(conv2(conv1(c_in(sigma) (x - centre))))) on items of shape (C, H, W): three 3x3
    convolutions (the last two with stride 2), each with FiLM on Fourier features of log sigma, then an MLP head.
    Sees image structure (e.g. the gap between two trouser legs) that the pixel MLP has to learn from 784 numbers."""

    def __init__(self, item_shape: tuple[int, ...], hidden: int, centre: Tensor, sigma_data: float, sigma_floor: float,
                 channels: tuple[int, int, int] = (16, 32, 32), frequencies: int = 8):
        super().__init__()
        if len(item_shape) != 3:
            raise ValueError(f"ratio fit: net='conv' needs image items (C, H, W), got item shape {tuple(item_shape)}")
        self.item_shape = tuple(int(n) for n in item_shape)
        self.register_buffer("sigma_floor", torch.tensor(float(sigma_floor)))
        self.register_buffer("centre", centre.reshape(1, -1).float().clone())
        self.register_buffer("sigma_data", torch.tensor(float(sigma_data)))
        self.register_buffer("freqs", 2.0 ** torch.arange(frequencies, dtype=torch.float32) / 8)
        self.channels = channels
        self.embed = nn.Sequential(nn.Linear(2 * frequencies + 1, hidden), nn.SiLU(), nn.Linear(hidden, 2 * sum(channels)))
        c, h, w = self.item_shape
        self.convs = nn.ModuleList([nn.Conv2d(c, channels[0], 3, padding=1), nn.Conv2d(channels[0], channels[1], 3, 2, 1),
                                    nn.Conv2d(channels[1], channels[2], 3, 2, 1)])
        size = ((h + 1) // 2 + 1) // 2 * (((w + 1) // 2 + 1) // 2)
        self.head = nn.Sequential(nn.Linear(channels[2] * size, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.float().clamp_min(float(self.sigma_floor))
        log_sigma = sigma.log()[:, None]
        phase = log_sigma * self.freqs
        film = self.embed(torch.cat([log_sigma, phase.sin(), phase.cos()], 1)).split([c for c in self.channels for _ in (0, 1)], 1)
        c_in = torch.rsqrt(self.sigma_data**2 + sigma[:, None] ** 2)
        h = ((x.float() - self.centre) * c_in).reshape(-1, *self.item_shape)
        for i, conv in enumerate(self.convs):
            h = nn.functional.silu(conv(h) * (1 + film[2 * i][:, :, None, None]) + film[2 * i + 1][:, :, None, None])
        return self.head(h.flatten(1))[:, 0]


def make_net(fit: RatioFit, dim: int, centre: Tensor, sigma_data: float, item_shape: tuple[int, ...] | None = None) -> nn.Module:
    """The classifier network that ``fit.net`` names (``item_shape``: the items' shape, needed by the conv net)."""
    if fit.net == "conv":
        if item_shape is None:
            raise ValueError("ratio fit: net='conv' needs the items' image shape")
        return ConvRatioNet(item_shape, fit.hidden, centre, sigma_data, fit.sigma_min)
    return RatioNet(dim, fit.hidden, centre, sigma_data, fit.sigma_min)


def fit_classifier(positive: Tensor, negative: Tensor, fit: RatioFit, *, seed: int, progress: bool = False,
                   desc: str = "ratio fit", item_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A :class:`RatioNet` (or :class:`ConvRatioNet`, ``fit.net``) trained with binary cross-entropy, ``fit.batch``
    items of each class per step (balanced, so its logit estimates log p_pos,sigma / p_neg,sigma), fresh Gaussian noise
    at sigma ~ log-uniform."""
    gen = torch.Generator().manual_seed(seed)
    both = torch.cat([positive, negative]).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = make_net(fit, both.shape[1], both.mean(0), float(both.std()), item_shape)
    opt = torch.optim.AdamW(net.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, fit.lr, total_steps=fit.steps, pct_start=0.1)
    labels = torch.cat([torch.ones(fit.batch), torch.zeros(fit.batch)])
    log_lo, log_hi = math.log(fit.sigma_min), math.log(fit.sigma_max)
    pos, neg = positive.float(), negative.float()
    for _ in tqdm(range(fit.steps), desc=desc, disable=not progress, leave=False):
        x0 = torch.cat([pos[torch.randint(len(pos), (fit.batch,), generator=gen)],
                        neg[torch.randint(len(neg), (fit.batch,), generator=gen)]])
        sigma = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(2 * fit.batch, generator=gen))
        x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=gen)
        loss = nn.functional.binary_cross_entropy_with_logits(net(x, sigma), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return net.eval().requires_grad_(False)


class FittedRatio:
    """The fitted classifier B (and its labelling of the bank): :meth:`log_odds` = log p_unsafe,sigma / p_safe,sigma."""

    def __init__(self, net: RatioNet, covered: Tensor, unsafe_share: float, fit: RatioFit, key: str):
        self.net, self.covered, self.unsafe_share, self.fit, self.key = net, covered, unsafe_share, fit, key

    @torch.no_grad()
    def log_odds(self, x: Tensor, sigma: Tensor) -> Tensor:
        """b(x, sigma) (B,) for x (B, D), sigma (B,): one batched forward pass, in x's dtype and device."""
        self.net.to(x.device)
        return self.net(x, sigma.to(x.device).reshape(-1).expand(x.shape[0])).to(x.dtype)

    def log_beta_star(self, x: Tensor, sigma: Tensor) -> Tensor:
        """log beta* = b + log(pi_u / (1 - pi_u)) (B,)."""
        if self.unsafe_share == 0:
            return torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        return self.log_odds(x, sigma) + (math.log(self.unsafe_share) - math.log1p(-self.unsafe_share))

    def posterior(self, x: Tensor, sigma: Tensor | float | None = None) -> Tensor:
        """r = beta* / (1 + beta*) (B,): the probability that x belongs to the unsafe part; ``sigma`` defaults to the
        smallest fitted noise level (a classifier of clean items)."""
        sigma = torch.as_tensor(self.fit.sigma_min if sigma is None else sigma, dtype=x.dtype, device=x.device)
        return torch.sigmoid(self.log_beta_star(x, sigma.reshape(-1).expand(x.shape[0])))


_CACHE: OrderedDict[str, FittedRatio] = OrderedDict()
CACHE_SIZE = 8


def _check(name: str, data: Tensor) -> None:
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"ratio fit: {name} must hold at least two items, got shape {tuple(data.shape)}")
    if not data.is_floating_point():
        raise ValueError(f"ratio fit: {name} must be floating point, got {data.dtype}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"ratio fit: {name} contains NaN or infinite values")


def fit_ratio(negation: NegationSet, bank: Tensor, fit: RatioFit | None = None, *, cache_dir: str | Path | None = None,
              progress: bool = False) -> FittedRatio:
    """Fit (or fetch from the cache) the two-stage classifier of the module docstring for ``negation`` and ``bank``
    (M, *item_shape), model samples. Cached under the content hashes of both and the settings ``fit``; with
    ``cache_dir`` also as ``ratio-<key>.safetensors`` there."""
    fit = fit or RatioFit()
    negation.check_compatible(bank, "ratio bank")
    flat, neg = bank.reshape(bank.shape[0], -1), negation.flat
    _check("the bank", flat)
    _check("the negation set", neg)
    key = hashlib.sha256(json.dumps([negation.content_hash, content_hash(flat), asdict(fit)]).encode()).hexdigest()[:24]
    return _cached(key, cache_dir, fit, negation.item_shape, lambda: _fit(  # fits run on the CPU
        flat.detach().float().cpu(), neg.detach().float().cpu(), fit, key, progress, negation.item_shape))


def cache_file(cache_dir: str | Path, key: str) -> Path:
    """Where a fit with cache ``key`` is stored in ``cache_dir``."""
    return Path(cache_dir) / f"ratio-{key}.safetensors"


def _cached(key: str, cache_dir: str | Path | None, fit: RatioFit, item_shape: tuple[int, ...],
            make: Callable[[], FittedRatio]) -> FittedRatio:
    """The fit stored under ``key`` in memory (last :data:`CACHE_SIZE`) or in ``cache_dir``, else ``make()`` (stored)."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    path = cache_file(cache_dir, key) if cache_dir is not None else None
    if path is not None and path.exists():
        fitted = _load(path, fit, key, item_shape)
    else:
        fitted = make()
        if path is not None:
            _save(fitted, path)
    _CACHE[key] = fitted
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return fitted


def fit_judge(negation: NegationSet, bank: Tensor, ratio: FittedRatio, fit: RatioFit | None = None, *,
              cache_dir: str | Path | None = None, progress: bool = False) -> FittedRatio:
    """An independent classifier of covered content for the default rule's counts (:func:`rule_judge`): classifier
    B's two classes (the negation set + the bank samples ``ratio`` labels covered, against the rest of ``bank``, the bank
    ``ratio`` was fitted on) refitted with the settings ``fit`` (default: ``ratio``'s with the conv net) and another seed,
    so it is a network the correction built from ``ratio`` never queries. Its :meth:`FittedRatio.posterior` is
    sigmoid(logit + log(pi_u / (1 - pi_u))) at its floor. Cached as :func:`fit_ratio` (key: ``ratio``'s key, the set's hash and shape, ``fit``)."""
    fit = fit or replace(ratio.fit, net="conv")
    flat = bank.reshape(bank.shape[0], -1).detach().float().cpu()
    covered = ratio.covered.cpu()
    if covered.shape[0] != flat.shape[0]:
        raise ValueError(f"fit_judge: the bank has {flat.shape[0]} samples but the fitted ratio labelled {covered.shape[0]}")
    key = hashlib.sha256(json.dumps([ratio.key, negation.content_hash, list(negation.item_shape), asdict(fit), "judge"])
                         .encode()).hexdigest()[:24]

    def make() -> FittedRatio:
        net = fit_classifier(torch.cat([negation.flat.detach().float().cpu(), flat[covered]]), flat[~covered], fit,
                             seed=fit.seed + 4, progress=progress, desc="rule judge", item_shape=negation.item_shape)
        return FittedRatio(net, covered, ratio.unsafe_share, fit, key)

    return _cached(key, cache_dir, fit, negation.item_shape, make)


def rule_judge(negation: NegationSet, fit: RatioFit | None = None, *, cache_dir: str | Path | None = None,
               progress: bool = False) -> Callable[[Calibration], Callable[[Tensor], Tensor]]:
    """The ``judge`` argument of :func:`~safedenoiser.methods.calibration.select_knobs` for a :class:`RatioCalibration`:
    calibration -> the posterior of covered content of :func:`fit_judge` (fitted on the calibration's own bank and
    split). Why not the calibration's classifier itself: a correction that pushes samples away from where classifier B
    says "covered" until the last step also pushes them out of B's decision region, whatever their content, so B
    would count its own every-step corrections as clean (measured on images: docs/fitted-ratio.md)."""
    def judge(calibration: Calibration) -> Callable[[Tensor], Tensor]:
        if not isinstance(calibration, RatioCalibration):
            raise ValueError("rule_judge needs a RatioCalibration (calibrate with RatioCalibration.fit)")
        fitted = fit_judge(negation, calibration.bank, calibration.ratio, fit, cache_dir=cache_dir, progress=progress)
        return fitted.posterior

    return judge


def label_sigma(neg: Tensor, fit: RatioFit) -> float:
    """Stage 1's noise floor: ``fit.label_sigma``, or max(sigma_min, median nearest-neighbour distance in the negation set
    / sqrt(D)), the level where noise blurs neighbouring items into each other (measured on the 75%-negated mixture in
    D = 64: at 0.05 held-out negated bank samples got log-odds from -13 to 8 and 26% were labelled safe; at 0.2 they
    lie within -0.3 and 1.0 and none is)."""
    if fit.label_sigma is not None:
        return fit.label_sigma
    spacing = float(nearest_distances(neg, neg, exclude_self=True).median()) / math.sqrt(neg.shape[1])
    return min(max(fit.sigma_min, spacing), 0.5 * fit.sigma_max)


def _fit(flat: Tensor, neg: Tensor, fit: RatioFit, key: str, progress: bool,
         item_shape: tuple[int, ...] | None = None) -> FittedRatio:
    labelling = replace(fit, sigma_min=label_sigma(neg, fit))
    sigma = torch.full((flat.shape[0],), labelling.sigma_min)
    halves = torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(fit.seed)).chunk(2)
    stage1 = torch.empty(flat.shape[0])
    for i, (held, train) in enumerate(((halves[0], halves[1]), (halves[1], halves[0]))):
        net = fit_classifier(neg, flat[train], labelling, seed=fit.seed + 1 + i, progress=progress, desc=f"ratio label {i + 1}/2",
                             item_shape=item_shape)
        with torch.no_grad():
            stage1[held] = net(flat[held], sigma[held])
    covered, share = covered_by(stage1, fit.label_cut)
    if bool(covered.all()):
        raise ValueError("ratio fit: the classifier labels every bank sample unsafe: nothing is left to estimate p_safe")
    if not bool(covered.any()):
        share = 0.0
    net = fit_classifier(torch.cat([neg, flat[covered]]), flat[~covered], fit, seed=fit.seed + 3, progress=progress,
                         desc="ratio fit", item_shape=item_shape)
    return FittedRatio(net, covered, share, fit, key)


def _save(fitted: FittedRatio, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"net.{k}": v.contiguous() for k, v in fitted.net.state_dict().items()}
    tensors["covered"] = fitted.covered.to(torch.uint8)
    fileio.save_safetensors(tensors, path, {"unsafe_share": repr(fitted.unsafe_share), "key": fitted.key})


def _load(path: Path, fit: RatioFit, key: str, item_shape: tuple[int, ...]) -> FittedRatio:
    tensors, meta = fileio.read_safetensors(path, what="ratio cache entry")
    if meta.get("key") != key:
        raise ValueError(f"{path}: ratio cache entry does not match this negation set, bank and fit")
    dim = math.prod(item_shape)
    net = make_net(fit, dim, torch.zeros(dim), 1.0, item_shape)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    return FittedRatio(net.eval().requires_grad_(False), tensors["covered"].bool(), float(meta["unsafe_share"]), fit, key)


class RatioCalibration(Calibration):
    """A :class:`Calibration` whose beta* and bank split come from a :class:`FittedRatio` instead of kernel densities
    and the kNN rule: ``log_beta_star`` = the classifier's log-odds + log(pi_u / (1 - pi_u)) (the kernel density of the
    negation set passed by the modes is not used), ``safe_bank`` = the bank samples it labels safe,
    ``covered_posterior`` (the substitution floor) = its posterior at the smallest noise level. The calibrated and
    substitution modes, the floor and :func:`select_knobs` take it as they take a kNN calibration."""

    def __init__(self, bank: Tensor, ratio: FittedRatio):
        flat = bank.reshape(bank.shape[0], -1)
        super().__init__(flat[~ratio.covered.to(flat.device)], ratio.unsafe_share, bank_size=flat.shape[0], bank=flat, cut="ratio")
        self.ratio = ratio

    @classmethod
    def fit(cls, bank: Tensor, negation: NegationSet, fit: RatioFit | None = None, **kwargs: Any) -> RatioCalibration:
        """Fit (or fetch) the classifier for ``negation`` and ``bank`` (:func:`fit_ratio`) and split the bank with it."""
        return cls(bank, fit_ratio(negation, bank, fit, **kwargs))

    def __repr__(self) -> str:
        return (f"RatioCalibration(bank={self.bank_size}, safe={self.safe_bank.shape[0]}, "
                f"unsafe_share={self.unsafe_share:.4f}, key={self.ratio.key})")

    def log_beta_star(self, x: Tensor, sigma: Tensor, log_unsafe_density: Tensor | None = None, safe: Any = None) -> Tensor:
        return self.ratio.log_beta_star(x, sigma)

    def covered_posterior(self, x0: Tensor, negation: NegationSet | None = None) -> Tensor:
        return self.ratio.posterior(x0)

    def is_covered(self, samples: Tensor, negation: NegationSet | None = None) -> Tensor:
        return self.ratio.posterior(samples) >= 0.5


ESTIMATORS = ("kernel", "ratio")


def calibrate(bank: Tensor, negation: NegationSet, estimator: str = "kernel", *, fit: RatioFit | None = None,
              cache_dir: str | Path | None = None, progress: bool = False) -> Calibration:
    """The calibration of the ``calibrated`` / ``substitution`` modes from ``bank`` (M, *item_shape), the model's own
    samples, by ``estimator``: ``kernel`` (:meth:`Calibration.from_bank`: kernel beta*, kNN bank split) or ``ratio``
    (:meth:`RatioCalibration.fit`: the fitted classifier's beta* and split; ``fit`` its settings, ``cache_dir`` its
    disk cache). The one switch the library, the hook (``calibration=calibrate(...)``) and the web engine use."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown beta* estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if estimator == "ratio":
        return RatioCalibration.fit(bank, negation, fit, cache_dir=cache_dir, progress=progress)
    if fit is not None or cache_dir is not None:
        raise ValueError("fit= and cache_dir= are settings of the ratio estimator; the kernel estimator takes neither")
    return Calibration.from_bank(bank, negation)
