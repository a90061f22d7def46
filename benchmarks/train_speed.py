"""Training throughput of the shipped image UNet on the CPU under each speed-up, as ratios to plain fp32 in the same
process: channels-last memory layout, bfloat16 autocast, ``torch.compile`` and their combinations.

    python benchmarks/train_speed.py --threads 1 --steps 40 --out results/train-speed

Each variant builds the model from the same seed, runs ``--warmup`` untimed steps (compilation happens there) and
then ``--steps`` timed steps of the real training step (EDM loss, backward, clipping, Adam, EMA) on Fashion-MNIST
batches; variants are timed in rounds so that load on a shared machine spreads over all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from safedenoiser import fileio
from safedenoiser.zoo.images.config import TrainConfig
from safedenoiser.zoo.images.data import load_data
from safedenoiser.zoo.images.train import build_model, edm_loss, optimise

VARIANTS = {
    "fp32": dict(),
    "channels-last": dict(channels_last=True),
    "bf16-autocast": dict(bf16=True),
    "compile": dict(compile=True),
    "bf16-autocast+compile": dict(bf16=True, compile=True),
    "channels-last+bf16-autocast+compile": dict(channels_last=True, bf16=True, compile=True),
}


def make_stepper(data, cfg: TrainConfig, channels_last=False, bf16=False, compile=False):
    """A closure running one training step of a fresh model with the given speed-ups."""
    torch.manual_seed(0)
    model = build_model(cfg, data)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    forward = torch.compile(model) if compile else model
    gen = torch.Generator().manual_seed(1)
    state = {"step": 0}

    def step():
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen)
        x0 = data.images[idx]
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = edm_loss(forward, x0, None, gen, cfg.p_mean, cfg.p_std)
        value = optimise(opt, model, ema, loss.float(), state["step"], lr=cfg.lr, warmup=cfg.warmup,
                         ema_decay=cfg.ema_decay)
        state["step"] += 1
        return value

    return step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="results/train-speed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig()
    data = load_data("fashion-mnist", "train")
    steppers = {name: make_stepper(data, cfg, **VARIANTS[name]) for name in args.variants}
    losses = {}
    for name, step in steppers.items():
        losses[name] = [step() for _ in range(args.warmup)]
    seconds = {name: [] for name in steppers}
    for _ in range(args.rounds):
        for name, step in steppers.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(seconds["fp32"]) if "fp32" in seconds else None
    rows = []
    for name in steppers:
        per_step = statistics.median(seconds[name])
        rows.append({"variant": name, "s_per_step": round(per_step, 4), "steps_per_s": round(1 / per_step, 2),
                     "speedup_vs_fp32": round(base / per_step, 2) if base else None,
                     "first_loss": round(losses[name][0], 4)})
    result = {"threads": args.threads, "batch_size": cfg.batch_size, "timed_steps": args.steps, "rounds": args.rounds,
              "torch": torch.__version__, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_text(out / "train_speed.json", json.dumps(result, indent=2))
    lines = ["| variant | s / step | steps / s | speed-up vs fp32 |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['s_per_step']} | {r['steps_per_s']} | {r['speedup_vs_fp32']}x |" for r in rows]
    fileio.write_text(out / "train_speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
