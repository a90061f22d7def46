"""The image-training configuration, apart from the training code so that the command line reads its defaults
without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    command: str = field(default="", repr=False)
