"""``train --text`` options that the image models do not have (no torch import: the CLI registers them)."""

from __future__ import annotations

import argparse

TEXT_ONLY_FLAGS: dict[str, dict] = {
    "device": dict(choices=("auto", "cpu", "cuda"), help="where the model, data and evaluation run (auto: cuda if "
                   "available)"),
    "precision": dict(choices=("fp32", "bf16"), help="training forward pass: fp32, or bf16 autocast"),
    "vae": dict(help="an AutoencoderKL folder (`safe-denoiser latent vae`): train the UNet on its latents and "
                "export a StableDiffusionPipeline"),
}


def add_text_train_flags(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--precision``, ``--vae`` (None when not given, so TextTrainConfig's defaults apply)."""
    for name, options in TEXT_ONLY_FLAGS.items():
        parser.add_argument("--" + name, dest=name, default=None, **options,
                            metavar=name.upper() if "choices" not in options else None)
