"""Train a small EDM-preconditioned UNet2DModel on Fashion-MNIST, the MNIST subset or a folder of images.

Loss (Karras et al. 2022, Eq. 2 and Table 1): ln sigma ~ N(P_mean, P_std^2), weight
lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, L = lambda |D(x0 + sigma n, sigma) - x0|^2.
Class-conditional training replaces the label by the null class with probability ``label_dropout``
(classifier-free guidance). Resumable: the full state (weights, EMA, optimiser, data RNG, step, wall
time) goes to ``<run>/state.pt`` every ``checkpoint_every`` steps, and the EMA weights to
``<run>/model.safetensors`` with a model card ``<run>/MODEL_CARD.md`` and sample grid.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ... import fileio
from .config import TrainConfig
from .data import DataError, ImageData, load_data
from .network import EDMUNet, unet_config


def edm_loss(model: EDMUNet, x0: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
             p_mean: float, p_std: float) -> torch.Tensor:
    """EDM's weighted denoising loss for a batch, averaged."""
    sigma = (torch.randn(x0.shape[0], generator=generator) * p_std + p_mean).exp()
    noise = torch.randn(x0.shape, generator=generator)
    s = sigma[:, None, None, None]
    weight = (s**2 + model.sigma_data**2) / (s * model.sigma_data) ** 2
    denoised = model(x0 + s * noise, sigma, labels)
    return (weight * (denoised - x0) ** 2).mean()


def optimise(opt: torch.optim.Optimizer, model: torch.nn.Module, ema: torch.nn.Module, loss: torch.Tensor, step: int, *,
             lr: float, warmup: int, ema_decay: float) -> float:
    """One optimiser step of the recipe every trainer here shares: learning rate ``lr * min(1, (step + 1) / warmup)``,
    gradients clipped at norm 1, EMA with decay ``min(ema_decay, (1 + step) / (10 + step))``; returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr * min(1.0, (step + 1) / warmup)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p, 1 - decay)
    return float(loss.detach())


class TrainClock:
    """The per-step bookkeeping the trainers share: step count, the loss's EMA (0.99), wall time summed over resumed
    sessions, the progress bar and the session's time limit."""

    def __init__(self, total: int, step: int, wall: float, loss_avg: float, time_limit_min: float, desc: str,
                 progress: bool):
        self.total, self.step, self.wall, self.loss_avg = total, step, wall, loss_avg
        self.limit_s, self.wall0, self.start = 60 * time_limit_min, wall, time.time()
        self.bar = tqdm(total=total, initial=step, desc=desc, disable=not progress, mininterval=10)

    def tick(self, loss: float) -> bool:
        """Count one step of loss ``loss``; True when training should stop (all steps done, or the time limit)."""
        self.loss_avg = loss if math.isnan(self.loss_avg) else 0.99 * self.loss_avg + 0.01 * loss
        self.step += 1
        elapsed = time.time() - self.start
        self.wall = self.wall0 + elapsed
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.loss_avg:.4f}", refresh=False)
        return self.step >= self.total or bool(self.limit_s and elapsed > self.limit_s)


def select_subset(data: ImageData, size: int, seed: int) -> tuple[ImageData, list[int]]:
    """``size`` distinct training items chosen with ``seed`` (the memorised set)."""
    if not 0 < size <= len(data):
        raise DataError(f"subset must be between 1 and {len(data)}, got {size}")
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return data.subset(index), index.tolist()


def build_model(cfg: TrainConfig, data: ImageData) -> EDMUNet:
    channels, height, width = data.image_shape
    if height != width:
        raise DataError(f"images must be square, got {height}x{width}")
    num_classes = len(data.class_names) if cfg.conditional else 0
    if cfg.conditional and data.labels is None:
        raise DataError(f"{data.source} has no labels: class-conditional training needs one sub-folder per class")
    kwargs = unet_config(height, channels, cfg.widths, attention=cfg.attention, num_classes=num_classes)
    return EDMUNet(kwargs, sigma_data=cfg.sigma_data, class_names=data.class_names if cfg.conditional else (),
                   num_classes=num_classes)


STATE_KEYS = ("model", "ema", "opt", "rng", "step", "wall", "loss_avg", "history", "config")


def load_state(path: str | Path) -> dict:
    """A training state written by :func:`train`, read with ``torch.load(weights_only=True)``: only tensors,
    dicts, lists, tuples, numbers and strings are accepted, so a crafted file cannot run code."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # pickle / zip errors have many types; all mean "not a state we wrote"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a readable training state ({type(err).__name__}: {reason}); "
                         "delete it to restart, or use a new --out folder") from err
    if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
        raise ValueError(f"{path} is not a training state of this program (missing keys); "
                         "delete it to restart, or use a new --out folder")
    return state


def check_config(cfg: TrainConfig) -> None:
    """Refuse values that would train nothing or crash later, naming the option."""
    checks = [("steps", cfg.steps >= 1), ("batch_size", cfg.batch_size >= 1), ("checkpoint_every", cfg.checkpoint_every >= 1),
              ("threads", cfg.threads >= 1), ("lr", math.isfinite(cfg.lr) and cfg.lr > 0), ("warmup", cfg.warmup >= 1),
              ("time_limit_min", math.isfinite(cfg.time_limit_min) and cfg.time_limit_min >= 0), ("subset", cfg.subset >= 0),
              ("widths", len(cfg.widths) > 0 and all(w >= 1 for w in cfg.widths)), ("image_size", cfg.image_size >= 1),
              ("ema_decay", 0 <= cfg.ema_decay < 1), ("label_dropout", 0 <= cfg.label_dropout <= 1),
              ("eval_every", cfg.eval_every >= 0), ("eval_samples", cfg.eval_samples >= 2), ("eval_steps", cfg.eval_steps >= 1),
              ("plateau", math.isfinite(cfg.plateau) and 0 <= cfg.plateau < 1)]
    for name, ok in checks:
        if not ok:
            raise ValueError(f"invalid training option {name}={getattr(cfg, name)!r}")
    if cfg.eval_every and cfg.data != "fashion-mnist":
        raise ValueError(f"eval_every needs --data fashion-mnist (the FD uses the Fashion-MNIST judge), got {cfg.data!r}")
    if cfg.plateau and not cfg.eval_every:
        raise ValueError("plateau stopping needs an FD curve: give eval_every > 0")


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train (or resume) into ``cfg.out``; returns the path of the exported EMA checkpoint."""
    check_config(cfg)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg.data, "train", size=cfg.image_size, channels=cfg.channels)
    subset_index: list[int] = []
    if cfg.subset:
        data, subset_index = select_subset(data, cfg.subset, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    state_path = out / "state.pt"
    step, wall, loss_avg, history, curve = 0, 0.0, float("nan"), [], []
    fileio.remove_stale_temps(out)
    if state_path.is_file():
        state = load_state(state_path)
        if list(state["config"]["widths"]) != list(cfg.widths) or state["config"]["conditional"] != cfg.conditional:
            raise ValueError(f"{state_path} was trained with another architecture; use a new --out folder")
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{state_path} does not match this model or data ({err}); use a new --out folder") from err
        step, wall, loss_avg, history = state["step"], state["wall"], state["loss_avg"], state["history"]
        curve = state.get("fd_curve", [])
    fileio.write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    labels_all = data.labels
    evaluator = reference = memorised = None
    threshold = 0.0
    if cfg.eval_every:
        from .assets import load_judge, memorised_copy_threshold
        from .evaluator import FeatureStats
        from .quality import test_set_stats

        evaluator = load_judge()
        if cfg.subset:  # a memorising run: how close do its samples come to the images it memorises?
            memorised, threshold = data.images, memorised_copy_threshold(subset_index)
            reference = FeatureStats.of(evaluator.features(memorised))
        else:
            reference = test_set_stats(evaluator)
    clock = TrainClock(cfg.steps, step, wall, loss_avg, cfg.time_limit_min, f"train {out.name}", progress)

    def train_step(step: int) -> float:
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen)
        labels = None
        if cfg.conditional:
            labels = labels_all[idx].clone()
            labels[torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout] = model.null_class
        loss = edm_loss(model, data.images[idx], labels, gen, cfg.p_mean, cfg.p_std)
        return optimise(opt, model, ema, loss, step, lr=cfg.lr, warmup=cfg.warmup, ema_decay=cfg.ema_decay)

    def evaluate() -> bool:
        from .quality import evaluate_samples, plateaued

        quality = evaluate_samples(ema.eval(), evaluator, reference, cfg.eval_samples, cfg.eval_steps,
                                   cfg.conditional, memorised, threshold)
        curve.append({"step": clock.step, **{k: round(v, 3) for k, v in quality.items()}, "wall_s": round(clock.wall, 1)})
        copies = f", {quality['copies']:.1%} copies" if "copies" in quality else ""
        clock.bar.write(f"step {clock.step}: FD {quality['fd']:.2f}{copies} ({cfg.eval_samples} samples, "
                        f"{cfg.eval_steps} Heun steps)")
        return plateaued(curve, cfg.plateau)

    def checkpoint(stalled: bool) -> None:
        step, wall, loss_avg = clock.step, clock.wall, clock.loss_avg
        history.append({"step": step, "loss": loss_avg, "wall_s": round(wall, 1)})
        info = {"command": cfg.command, "data": data.source, "steps": step, "wall_time_s": round(wall, 1),
                "seed": cfg.seed, "final_loss": round(loss_avg, 5), "batch_size": cfg.batch_size,
                "subset_index": subset_index, "params": sum(p.numel() for p in model.parameters()),
                "fd_curve": curve, "stopped_on_plateau": stalled}
        # the export first, the state second: a kill between the two resumes from the older state and
        # exports again, so model.safetensors is never older than state.pt
        ema.save(out / "model.safetensors", info)
        state = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                 "rng": gen.get_state(), "step": step, "wall": wall, "loss_avg": loss_avg,
                 "history": history, "fd_curve": curve, "config": asdict(cfg)}
        fileio.write_with(state_path, lambda tmp: torch.save(state, tmp))

    model.train()
    run_steps(clock, train_step, checkpoint_every=cfg.checkpoint_every, checkpoint=checkpoint,
              eval_every=cfg.eval_every, evaluate=evaluate)
    return out / "model.safetensors"


def run_steps(clock: TrainClock, train_step: Callable[[int], float], *, checkpoint_every: int,
              checkpoint: Callable[[bool], None], eval_every: int = 0, evaluate: Callable[[], bool] | None = None,
              eval_at_end: bool = False, stalled: bool = False) -> bool:
    """The training loop of every trainer here: until ``clock.total`` steps, the clock's time limit or a plateau, one
    ``train_step(step)`` per step (an optimiser step; returns its loss); every ``eval_every`` steps (and at the last
    one with ``eval_at_end``) ``evaluate()``, which says whether the quality curve has flattened (training stops);
    every ``checkpoint_every`` steps and at the last one ``checkpoint(stalled)``. ``stalled``: the run had already
    stopped on a plateau (no step is taken). Returns whether training stopped on a plateau; closes the progress bar."""
    while clock.step < clock.total and not stalled:
        done = clock.tick(train_step(clock.step))
        if eval_every and evaluate is not None and (clock.step % eval_every == 0 or (eval_at_end and done)):
            stalled = evaluate()
            done = done or stalled
        if clock.step % checkpoint_every == 0 or done:
            checkpoint(stalled)
        if done:
            break
    clock.bar.close()
    return stalled


class TrainStateError(ValueError):
    """A state.pt that cannot be read, or one from another configuration."""


def resolve_device(name: str) -> torch.device:
    """``auto``: cuda when available, else cpu; ``cuda`` without a GPU is an error naming the option."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def load_train_state(path: Path, config: dict[str, Any], may_change: Sequence[str],
                     defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """A training state (tensors, numbers and strings only: ``weights_only=True``, on the CPU) whose recorded
    ``config`` equals ``config`` except for the keys in ``may_change`` (``defaults``: values of keys that older states
    lack); anything else is refused in one line naming the settings."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # a truncated file or one holding objects other than tensors and plain data
        raise TrainStateError(f"cannot read the training state {path} ({type(err).__name__}: {err}); "
                              "delete it to start over, or use another --out folder") from err
    saved = {**(defaults or {}), **state.get("config", {})}
    changed = [k for k in config if k not in may_change and saved.get(k) != config[k]]
    if changed:
        was = ", ".join(f"{k}={saved.get(k)!r}" for k in changed)
        now = ", ".join(f"{k}={config[k]!r}" for k in changed)
        raise TrainStateError(f"{path} was trained with {was}, not {now}; resume with the same settings or use a "
                              "new --out folder")
    return state


def restore_training(state: dict[str, Any] | None, model: Any, ema: Any, opt: Any, gen: torch.Generator,
                     seed: int) -> tuple[int, float, float, list]:
    """Load a state (:func:`load_train_state`) into the model, EMA, optimiser and data generator; returns (step, wall
    time, loss EMA, history), or the values of a fresh start without a state. A generator state of another device
    cannot be set: the data order then continues from ``seed + 1 + step``."""
    if state is None:
        return 0, 0.0, float("nan"), []
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    step = int(state["step"])
    try:
        gen.set_state(state["rng"])
    except (RuntimeError, ValueError):
        gen.manual_seed(seed + 1 + step)
    return step, float(state["wall"]), float(state["loss_avg"]), json.loads(state["history"])


def plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """A dataclass dict as JSON / state.pt stores it (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
