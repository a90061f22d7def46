"""The VAE's training configuration, apart from the training code so that the command line reads its defaults without
importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

LATENT_CHANNELS = 4


@dataclass
class VaeTrainConfig:
    out: str = "runs/fashion-vae"
    steps: int = 20000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    widths: tuple[int, ...] = (32, 64, 64)
    kl_weight: float = 1e-6
    seed: int = 0
    checkpoint_every: int = 1000
    scale_samples: int = 10000  # training images whose latents set the scaling factor
    eval_images: int = 10000  # test images of the reconstruction quality (judge accuracy, FD)
    time_limit_min: float = 0.0
    threads: int = 1
    device: str = "auto"
    command: str = field(default="", repr=False)


#: VAE settings a resumed run may change.
VAE_RESUME_MAY_CHANGE = ("out", "steps", "checkpoint_every", "time_limit_min", "threads", "device", "command")
