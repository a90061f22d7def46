"""Train the text-to-image UNet as Stable Diffusion is trained: VP schedule (DDPM linear betas), uniform
timesteps, v-prediction loss ``|F(x_t, t, text) - (alpha_t eps - sigma_t x0)|^2``, the caption replaced by the
empty caption with probability ``caption_dropout`` (classifier-free guidance).

Captions are drawn per image from :mod:`.captions` (templates x synonyms of its class); their MiniLM token
embeddings are computed once. Resumable: ``<out>/state.pt`` (tensors, numbers and strings only, loaded with
``weights_only=True``) every ``checkpoint_every`` steps; the EMA weights are exported as a
``FashionTextPipeline`` folder ``<out>/pipeline`` (unet and scheduler; the text encoder comes from its package). Every ``eval_every`` steps the judge's accuracy on
the requested class (training captions and held-out paraphrases) is logged to ``<out>/history.json``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..fileio import write_text, write_with
from ..images.data import FASHION_CLASSES, load_data
from ..models.conversions import v_from_eps_x0
from ..images.train import optimise
from .captions import held_out_captions, training_captions
from .pipeline import FashionTextPipeline, sampling_scheduler, save_shipped, training_scheduler, unet_for_text
from .text import encode_prompts, load_minilm


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
    eval_guidance: float = 3.0
    eval_steps: int = 20
    time_limit_min: float = 0.0
    threads: int = 1
    command: str = field(default="", repr=False)


class TrainStateError(ValueError):
    """A state.pt that cannot be read, or one from another configuration."""


def caption_table() -> tuple[list[str], torch.Tensor]:
    """All training captions and, per caption, its class index (C,)."""
    captions, labels = [], []
    for label, name in enumerate(FASHION_CLASSES):
        for caption in training_captions(name):
            captions.append(caption)
            labels.append(label)
    return captions, torch.tensor(labels)


def judge_accuracy(pipe: FashionTextPipeline, judge: Any, prompts: list[str], labels: list[int], guidance: float,
                   steps: int, seed: int = 0) -> float:
    """Share of ``prompts`` whose image (one per prompt, seed ``seed + i``) the judge assigns to its label."""
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt").images
    return float((judge.classify(images) == torch.tensor(labels)).float().mean())


def evaluation_prompts(per_class: int, held_out: bool) -> tuple[list[str], list[int]]:
    prompts, labels = [], []
    for label, name in enumerate(FASHION_CLASSES):
        pool = held_out_captions(name) if held_out else training_captions(name)
        for i in range(per_class):
            prompts.append(pool[(7 * i) % len(pool)])
            labels.append(label)
    return prompts, labels


def _load_state(path: Path, cfg: TextTrainConfig) -> dict[str, Any]:
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # a truncated file or one holding objects other than tensors and plain data
        raise TrainStateError(f"cannot read the training state {path} ({type(err).__name__}: {err}); "
                              "delete it to start over, or use another --out folder") from err
    saved, mine = state.get("config", {}), _plain(asdict(cfg))
    for key in ("widths", "prediction_type"):
        if saved.get(key) != mine[key]:
            raise TrainStateError(f"{path} was trained with {key}={saved.get(key)!r}, not {getattr(cfg, key)!r}; "
                                  "use a new --out folder")
    return state


def train_text(cfg: TextTrainConfig, progress: bool = True) -> Path:
    """Train (or resume) into ``cfg.out``; returns the exported pipeline folder."""
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.checkpoint_every < 1:
        raise ValueError("steps, batch_size and checkpoint_every must be >= 1")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data("fashion-mnist", "train")
    tokenizer, encoder = load_minilm()
    captions, caption_labels = caption_table()
    caption_embeds = encode_prompts(tokenizer, encoder, captions)  # (C, 16, 384)
    empty_embed = encode_prompts(tokenizer, encoder, [""])  # (1, 16, 384)
    by_class = [torch.nonzero(caption_labels == c).flatten() for c in range(len(FASHION_CLASSES))]

    torch.manual_seed(cfg.seed)
    unet = unet_for_text(widths=cfg.widths)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = training_scheduler(cfg.prediction_type)
    abar = schedule.alphas_cumprod.float()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, wall, loss_avg, history = 0, 0.0, float("nan"), []
    state_path = out / "state.pt"
    if state_path.is_file():
        state = _load_state(state_path, cfg)
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["rng"])
        step, wall, loss_avg = int(state["step"]), float(state["wall"]), float(state["loss_avg"])
        history = json.loads(state["history"])
    judge = None
    start, wall0 = time.time(), wall
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {out.name}", disable=not progress, mininterval=10)
    unet.train()
    while step < cfg.steps:
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen)
        labels = data.labels[idx]
        pick = torch.stack([by_class[int(c)][torch.randint(len(by_class[int(c)]), (1,), generator=gen)] for c in labels])
        context = caption_embeds[pick.flatten()]
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout
        context[drop] = empty_embed
        x0 = data.images[idx]
        t = torch.randint(0, len(abar), (cfg.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        alpha, sigma = abar[t].sqrt()[:, None, None, None], (1 - abar[t]).sqrt()[:, None, None, None]
        target = v_from_eps_x0(noise, x0, alpha, sigma) if cfg.prediction_type == "v_prediction" else noise
        loss = (unet(alpha * x0 + sigma * noise, t, encoder_hidden_states=context).sample - target).pow(2).mean()
        value = optimise(opt, unet, ema, loss, step, lr=cfg.lr, warmup=cfg.warmup, ema_decay=cfg.ema_decay)
        loss_avg = value if math.isnan(loss_avg) else 0.99 * loss_avg + 0.01 * value
        step += 1
        wall = wall0 + time.time() - start
        bar.update(1)
        bar.set_postfix(loss=f"{loss_avg:.4f}", refresh=False)
        done = step >= cfg.steps or bool(cfg.time_limit_min and time.time() - start > 60 * cfg.time_limit_min)
        if cfg.eval_every and (step % cfg.eval_every == 0 or done):
            pipe = FashionTextPipeline(ema, sampling_scheduler(schedule), encoder, tokenizer)
            pipe.set_progress_bar_config(disable=True)
            if judge is None:
                from ..images.assets import load_judge

                judge = load_judge()
            entry = {"step": step, "loss": round(loss_avg, 5), "wall_s": round(wall, 1)}
            for key, held in (("accuracy_train_captions", False), ("accuracy_held_out", True)):
                prompts, labels_ = evaluation_prompts(10, held)
                entry[key] = judge_accuracy(pipe, judge, prompts, labels_, cfg.eval_guidance, cfg.eval_steps)
            history.append(entry)
            bar.write(json.dumps(entry))
        if step % cfg.checkpoint_every == 0 or done:
            state = {"model": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "rng": gen.get_state(), "step": step, "wall": wall, "loss_avg": loss_avg,
                     "history": json.dumps(history), "config": _plain(asdict(cfg))}
            write_with(state_path, lambda tmp: torch.save(state, tmp))
            pipe = FashionTextPipeline(ema, sampling_scheduler(schedule), encoder, tokenizer)
            export = save_shipped(pipe, out / "pipeline")
            info = {"command": cfg.command, "steps": step, "wall_time_s": round(wall, 1), "seed": cfg.seed,
                    "final_loss": round(loss_avg, 5), "batch_size": cfg.batch_size, "history": history,
                    "params": sum(p.numel() for p in unet.parameters()), "config": _plain(asdict(cfg))}
            write_text(export / "training.json", json.dumps(info, indent=2))
            write_text(out / "history.json", json.dumps(history, indent=2))
        if done:
            break
    bar.close()
    return out / "pipeline"


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def run_text_training(args: Any, command: str) -> int:
    """``safe-denoiser train --text``: the train flags the user gave, mapped onto :class:`TextTrainConfig` (whose
    defaults apply to the rest); flags of the image models only are refused."""
    from ..argtypes import given_config_values
    from ..images.config import TRAIN_FLAGS

    given = given_config_values(args, TRAIN_FLAGS)
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
