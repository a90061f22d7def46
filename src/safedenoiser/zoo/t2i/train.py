"""Train the text-to-image UNet as Stable Diffusion is trained: VP schedule (DDPM linear betas), uniform
timesteps, v-prediction loss ``|F(x_t, t, text) - (alpha_t eps - sigma_t x0)|^2``, the caption replaced by the
empty caption with probability ``caption_dropout`` (classifier-free guidance).

Pixel space (``FashionTextPipeline``, 28x28) or, with ``vae``, the latents of a trained ``AutoencoderKL`` times its
scaling factor (``x0 = mean + std * n`` drawn from the encoder's posterior per step, as SD trains), exported as
diffusers' own ``StableDiffusionPipeline``. One loop for both.

Captions are drawn per image from :mod:`.captions` (templates x synonyms of its class); their MiniLM token
embeddings come from ``<out>/captions.safetensors`` (:func:`.text.cached_caption_embeddings`: with a matching cache
the text encoder is never loaded). Resumable: ``<out>/state.pt`` (tensors, numbers and strings only, loaded with
``weights_only=True``) every ``checkpoint_every`` steps, written *after* the EMA pipeline export ``<out>/pipeline``
(so the export is never older than the state); a resume with other training settings is refused.

Every ``eval_every`` steps (:func:`text_sample_quality`): the FD, in the judge's feature space, of guided samples of
class-balanced training captions against the Fashion-MNIST test set, the judge's accuracy on them and on held-out
paraphrases; with ``plateau`` training stops when the FD curve flattens (:func:`..images.quality.plateaued`).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ... import fileio
from ..images.grids import save_grid
from ..images.data import FASHION_CLASSES, load_data
from ..images.train import (TrainClock, TrainStateError, load_train_state, optimise, plain_config, resolve_device,  # noqa: F401
                            restore_training, run_steps)
from ...models.conversions import v_from_eps_x0
from .captions import held_out_captions, training_captions
from .text import cached_caption_embeddings


@dataclass
class TextTrainConfig:
    out: str = "runs/fashion-t2i"
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    widths: tuple[int, ...] = (32, 64, 64)
    caption_dropout: float = 0.1
    prediction_type: str = "v_prediction"
    seed: int = 0
    checkpoint_every: int = 250
    eval_every: int = 500
    eval_samples: int = 200  # guided samples (class-balanced training captions) per FD evaluation
    eval_guidance: float = 3.0
    eval_steps: int = 20
    plateau: float = 0.0  # stop when the best FD of the last fifth of training is < this much better (0: all steps)
    time_limit_min: float = 0.0
    threads: int = 1
    device: str = "auto"
    precision: str = "fp32"
    vae: str = ""  # an AutoencoderKL folder: train on its latents (a StableDiffusionPipeline is exported)
    command: str = field(default="", repr=False)


#: Settings a resumed run may change: where and how long it runs, not what it trains.
RESUME_MAY_CHANGE = ("out", "steps", "checkpoint_every", "eval_every", "plateau", "time_limit_min", "threads",
                     "device", "precision", "command")
CAPTION_CACHE = "captions.safetensors"


def caption_table() -> tuple[list[str], torch.Tensor]:
    """All training captions (grouped by class, in class order) and, per caption, its class index (C,)."""
    captions, labels = [], []
    for label, name in enumerate(FASHION_CLASSES):
        for caption in training_captions(name):
            captions.append(caption)
            labels.append(label)
    return captions, torch.tensor(labels)


def all_captions() -> tuple[list[str], Tensor, list[str]]:
    """What the trainer encodes once: training captions + held-out paraphrases + the empty caption, with the
    training captions' labels and the held-out ones."""
    train, labels = caption_table()
    held = [c for name in FASHION_CLASSES for c in held_out_captions(name)]
    return train + held + [""], labels, held


def evaluation_prompts(per_class: int, held_out: bool) -> tuple[list[str], list[int]]:
    """``per_class`` captions of every class, cycling through its training captions (or held-out paraphrases)."""
    prompts, labels = [], []
    for label, name in enumerate(FASHION_CLASSES):
        pool = held_out_captions(name) if held_out else training_captions(name)
        for i in range(per_class):
            prompts.append(pool[(7 * i) % len(pool)])
            labels.append(label)
    return prompts, labels


def judge_accuracy(pipe: Any, judge: Any, prompts: list[str], labels: list[int], guidance: float,
                   steps: int, seed: int = 0) -> float:
    """Share of ``prompts`` whose image (one per prompt, seed ``seed + i``) the judge assigns to its label."""
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt").images
    return float((judge.classify(images) == torch.tensor(labels)).float().mean())


#: draw(prompt_embeds (B, T, D), negative (1, T, D), generators, guidance, steps) -> images (B, 1, 28, 28) in [-1, 1]
Draw = Callable[[Tensor, Tensor, list, float, int], Tensor]


def text_sample_quality(draw: Draw, judge: Any, reference: Any, table: dict[str, Any], samples: int,
                        guidance: float, steps: int) -> tuple[dict[str, float], Tensor]:
    """({"fd", "accuracy_train_captions", "accuracy_held_out"}, images): ``samples`` guided samples of class-balanced training
    captions (caption ``7 i mod n`` of its class, seed ``EVAL_SEED + i``, as the image models' FD), their FD in the
    judge's feature space against ``reference`` and the judge's accuracy on them; and the accuracy on 10 held-out
    paraphrases per class (seeds 0..99). ``images``: the training-caption samples, class by class."""
    from ..images.evaluator import frechet_distance
    from ..images.quality import EVAL_SEED

    per_class = max(1, samples // len(FASHION_CLASSES))
    labels = torch.arange(len(FASHION_CLASSES)).repeat_interleave(per_class)
    rows = torch.tensor([int(table["offsets"][c]) + (7 * i) % int(table["counts"][c])
                         for c in range(len(FASHION_CLASSES)) for i in range(per_class)])
    gens = [torch.Generator().manual_seed(EVAL_SEED + i) for i in range(len(rows))]
    samples_ = draw(table["train"][rows], table["empty"], gens, guidance, steps)
    result = {"fd": frechet_distance(judge.features(samples_), reference),
              "accuracy_train_captions": float((judge.classify(samples_) == labels).double().mean())}
    held, held_labels = evaluation_prompts(10, True)
    index = [table["held_out_names"].index(p) for p in held]
    gens = [torch.Generator().manual_seed(i) for i in range(len(held))]
    images = draw(table["held_out"][index], table["empty"], gens, guidance, steps)
    result["accuracy_held_out"] = float((judge.classify(images) == torch.tensor(held_labels)).double().mean())
    return result, samples_


def check_text_config(cfg: TextTrainConfig) -> None:
    """Refuse values that would train nothing or crash later, naming the option."""
    checks = [("steps", cfg.steps >= 1), ("batch_size", cfg.batch_size >= 1),
              ("checkpoint_every", cfg.checkpoint_every >= 1), ("threads", cfg.threads >= 1),
              ("lr", math.isfinite(cfg.lr) and cfg.lr > 0), ("warmup", cfg.warmup >= 1),
              ("eval_every", cfg.eval_every >= 0), ("eval_samples", cfg.eval_samples >= 20),
              ("eval_steps", cfg.eval_steps >= 1), ("plateau", math.isfinite(cfg.plateau) and 0 <= cfg.plateau < 1),
              ("time_limit_min", math.isfinite(cfg.time_limit_min) and cfg.time_limit_min >= 0),
              ("precision", cfg.precision in ("fp32", "bf16")), ("caption_dropout", 0 <= cfg.caption_dropout <= 1)]
    for name, ok in checks:
        if not ok:
            raise ValueError(f"invalid training option {name}={getattr(cfg, name)!r}")
    if cfg.plateau and not cfg.eval_every:
        raise ValueError("plateau stopping needs an FD curve: give eval_every > 0")


class _Space:
    """What differs between pixel and latent training: the training items, the sampler, the export."""

    def __init__(self, cfg: TextTrainConfig, device: torch.device):
        data = load_data("fashion-mnist", "train")
        self.labels = data.labels.to(device)
        self.vae = None
        if cfg.vae:
            from ..latent.vae import encode_dataset, load_vae

            self.vae = load_vae(cfg.vae, device)
            self.mean, self.std = encode_dataset(self.vae, data.images, device)
        else:
            self.mean, self.std = data.images.to(device), None
        self.item_shape = tuple(self.mean.shape[1:])

    def batch(self, idx: Tensor, gen: torch.Generator) -> Tensor:
        if self.std is None:
            return self.mean[idx]
        return self.mean[idx] + self.std[idx] * torch.randn(self.mean[idx].shape, generator=gen, device=idx.device)

    def unet(self, widths: tuple[int, ...]) -> Any:
        from .pipeline import unet_for_text

        channels, size, _ = self.item_shape
        return unet_for_text(image_size=size, channels=channels, widths=widths)

    def pipeline(self, ema: Any, scheduler: Any) -> Any:
        if self.vae is None:
            from .pipeline import FashionTextPipeline

            pipe = FashionTextPipeline(ema, scheduler, load_text_encoder=False)
        else:
            from ..latent.pipeline import latent_pipeline

            pipe = latent_pipeline(self.vae, ema, scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def draw(self, pipe: Any) -> Draw:
        def draw(embeds: Tensor, negative: Tensor, gens: list, guidance: float, steps: int) -> Tensor:
            device, dtype = pipe.unet.device, pipe.unet.dtype
            out = pipe(prompt_embeds=embeds.to(device, dtype), negative_prompt_embeds=negative.expand(len(embeds), -1, -1)
                       .to(device, dtype), num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                       output_type="pt").images
            if self.vae is None:
                return out.float().cpu()
            from ..latent.vae import from_vae_output

            return from_vae_output(out.float().cpu() * 2 - 1)
        return draw

    def export(self, pipe: Any, folder: Path) -> Path:
        if self.vae is None:
            from .pipeline import save_shipped

            return save_shipped(pipe, folder)
        from ..latent.pipeline import save_latent_pipeline

        return save_latent_pipeline(pipe, folder)


def train_text(cfg: TextTrainConfig, progress: bool = True) -> Path:
    """Train (or resume) into ``cfg.out``; returns the exported pipeline folder."""
    from .pipeline import sampling_scheduler, training_scheduler

    check_text_config(cfg)
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "pipeline"):
        fileio.remove_stale_temps(folder)
    state_path = out / "state.pt"
    config = plain_config(asdict(cfg))
    state = (load_train_state(state_path, config, RESUME_MAY_CHANGE, {"vae": "", "eval_samples": cfg.eval_samples})
             if state_path.is_file() else None)  # refused before any expensive setup
    captions, caption_labels, held = all_captions()
    embeds = cached_caption_embeddings(captions, out / CAPTION_CACHE)  # (C + H + 1, 16, 384), fp16-rounded
    n_train = len(caption_labels)
    counts = torch.bincount(caption_labels, minlength=len(FASHION_CLASSES))
    table = {"train": embeds[:n_train], "held_out": embeds[n_train:-1], "empty": embeds[-1:], "held_out_names": held,
             "counts": counts, "offsets": torch.cumsum(counts, 0) - counts}
    train_embeds, empty_embed = table["train"].to(device), table["empty"].to(device)
    counts_d, offsets_d = counts.to(device), table["offsets"].to(device)

    space = _Space(cfg, device)
    torch.manual_seed(cfg.seed)
    unet = space.unet(cfg.widths).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = training_scheduler(cfg.prediction_type)
    abar = schedule.alphas_cumprod.float().to(device)
    gen = torch.Generator(device).manual_seed(cfg.seed + 1)
    step, wall, loss_avg, history = restore_training(state, unet, ema, opt, gen, cfg.seed)
    from ..images.quality import plateaued

    judge = reference = None
    export = out / "pipeline"
    stalled = bool(history) and plateaued([h for h in history if "fd" in h], cfg.plateau)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    clock = TrainClock(cfg.steps, step, wall, loss_avg, cfg.time_limit_min, f"train {out.name}", progress)

    def train_step(step: int) -> float:
        idx = torch.randint(len(space.labels), (cfg.batch_size,), generator=gen, device=device)
        labels = space.labels[idx]
        pick = offsets_d[labels] + (torch.rand(cfg.batch_size, generator=gen, device=device) * counts_d[labels]).long()
        drop = torch.rand(cfg.batch_size, generator=gen, device=device) < cfg.caption_dropout
        context = torch.where(drop[:, None, None], empty_embed, train_embeds[pick])
        x0 = space.batch(idx, gen)
        t = torch.randint(0, len(abar), (cfg.batch_size,), generator=gen, device=device)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        alpha, sigma = abar[t].sqrt()[:, None, None, None], (1 - abar[t]).sqrt()[:, None, None, None]
        target = v_from_eps_x0(noise, x0, alpha, sigma) if cfg.prediction_type == "v_prediction" else noise
        with autocast:
            pred = unet(alpha * x0 + sigma * noise, t, encoder_hidden_states=context).sample
        loss = (pred.float() - target).pow(2).mean()
        return optimise(opt, unet, ema, loss, step, lr=cfg.lr, warmup=cfg.warmup, ema_decay=cfg.ema_decay)

    def evaluate() -> bool:
        nonlocal judge, reference
        if judge is None:
            from ..images.assets import load_judge
            from ..images.quality import test_set_stats

            judge = load_judge()
            reference = test_set_stats(judge)
        ema.eval()
        pipe = space.pipeline(ema, sampling_scheduler(schedule))
        quality, images = text_sample_quality(space.draw(pipe), judge, reference, table, cfg.eval_samples,
                                              cfg.eval_guidance, cfg.eval_steps)
        per_class = len(images) // len(FASHION_CLASSES)
        grid = images.view(len(FASHION_CLASSES), per_class, *images.shape[1:])[:, :10].flatten(0, 1)
        save_grid(grid, out / "samples.png", nrow=min(10, per_class))
        entry = {"step": clock.step, "loss": round(clock.loss_avg, 5), "wall_s": round(clock.wall, 1),
                 **{k: round(v, 4) for k, v in quality.items()}}
        history.append(entry)
        clock.bar.write(json.dumps(entry))
        return plateaued([h for h in history if "fd" in h], cfg.plateau)

    def checkpoint(stalled: bool) -> None:
        step, wall, loss_avg = clock.step, clock.wall, clock.loss_avg
        info = {"command": cfg.command, "steps": step, "wall_time_s": round(wall, 1), "seed": cfg.seed,
                "final_loss": round(loss_avg, 5), "batch_size": cfg.batch_size, "history": history,
                "stopped_on_plateau": stalled, "device": device.type,
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "params": sum(p.numel() for p in unet.parameters()), "config": config}
        # the export first, the state second: a kill between the two resumes from the older state and exports
        # again, so the pipeline is never older than state.pt
        space.export(space.pipeline(ema, sampling_scheduler(schedule)), export)
        fileio.write_text(export / "training.json", json.dumps(info, indent=2))
        fileio.write_text(out / "history.json", json.dumps(history, indent=2))
        state = {"model": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                 "rng": gen.get_state(), "step": step, "wall": wall, "loss_avg": loss_avg,
                 "history": json.dumps(history), "config": config}
        fileio.write_with(state_path, lambda tmp: torch.save(state, tmp))

    unet.train()
    run_steps(clock, train_step, checkpoint_every=cfg.checkpoint_every, checkpoint=checkpoint, eval_every=cfg.eval_every,
              evaluate=evaluate, eval_at_end=True, stalled=stalled)
    step = clock.step
    if not (export / "training.json").is_file():  # a finished state whose export was deleted: export it again
        space.export(space.pipeline(ema, sampling_scheduler(schedule)), export)
        fileio.write_text(export / "training.json", json.dumps({"command": cfg.command, "steps": step,
                                                                "history": history,
                                                                "config": config}, indent=2))
    return export


def run_text_training(args: Any, command: str) -> int:
    """``safe-denoiser train --text``: the train flags the user gave, mapped onto :class:`TextTrainConfig` (whose
    defaults apply to the rest); flags of the image models only are refused."""
    from ...argtypes import given_config_values
    from ..images.config import TRAIN_FLAGS
    from .train_flags import TEXT_ONLY_FLAGS

    given = given_config_values(args, TRAIN_FLAGS)
    given.update(given_config_values(args, {k: v for k, v in TEXT_ONLY_FLAGS.items() if hasattr(args, k)}))
    known = {f.name for f in fields(TextTrainConfig)}
    image_only = sorted(k for k in given if k not in known)
    if image_only or args.conditional:
        names = [TRAIN_FLAGS[k].get("flag", "--" + k.replace("_", "-")) for k in image_only] + (
            ["--conditional"] if args.conditional else [])
        raise ValueError(f"train --text: {', '.join(names)} apply to the image models only")
    cfg = TextTrainConfig(out=args.out, command=command, **given)
    path = train_text(cfg)
    print(f"pipeline: {path}")
    return 0
