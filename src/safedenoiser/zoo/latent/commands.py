"""CLI: ``safe-denoiser latent vae`` (train the testbed's AutoencoderKL; the latent UNet is ``train --text --vae``)."""

from __future__ import annotations

import argparse

from ...argtypes import int_list, nonnegative_float, positive_int
from ..images.config import TRAIN_FLAGS

#: ``latent vae`` options, one per VaeTrainConfig field (default and value shape from the config)
VAE_FLAGS: dict[str, dict] = {
    **{k: TRAIN_FLAGS[k] for k in ("steps", "batch_size", "lr", "seed", "checkpoint_every", "time_limit_min", "threads")},
    "widths": dict(type=int_list, nargs=None, help="encoder / decoder block widths, comma separated (3: 8x8 latents)"),
    "kl_weight": dict(type=nonnegative_float, help="weight of the KL term"),
    "scale_samples": dict(type=positive_int, help="training images whose sampled latents set the scaling factor"),
    "eval_images": dict(type=positive_int, help="test images of the reconstruction quality (judge accuracy, FD)"),
    "device": dict(choices=("auto", "cpu", "cuda"), help="where training runs"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from ...argtypes import add_config_flags
    from .config import VaeTrainConfig

    latent = subparsers.add_parser("latent", help="the latent text-to-image testbed (VAE; UNet: train --text --vae)")
    sub = latent.add_subparsers(dest="latent_command", required=True)
    vae = sub.add_parser("vae", help="train the Fashion-MNIST AutoencoderKL (exports <out>/vae with its scaling factor)")
    vae.add_argument("--out", required=True, help="run folder (resumes when it holds a state.pt)")
    add_config_flags(vae, VaeTrainConfig(), VAE_FLAGS)
    vae.set_defaults(run=run_vae)
    card = sub.add_parser("card", help="write the model card (README.md, sample grids) of a latent pipeline folder")
    card.add_argument("--pipeline", required=True, help="the pipeline folder `train --text --vae` exported")
    card.add_argument("--vae-info", default=None, help="the VAE's training.json (default: beside the VAE it trained on)")
    card.set_defaults(run=run_card)


def run_vae(args: argparse.Namespace) -> int:
    import json

    from ...argtypes import given_config_values
    from ..images.commands import command_line
    from .config import VaeTrainConfig
    from .vae import train_vae

    cfg = VaeTrainConfig(out=args.out, command=command_line(args), **given_config_values(args, VAE_FLAGS))
    folder = train_vae(cfg)
    quality = json.loads((folder / "training.json").read_text())["test_quality"]
    print(f"vae: {folder} {json.dumps(quality)}")
    return 0


def run_card(args: argparse.Namespace) -> int:
    from .card import write_latent_card

    print(f"card: {write_latent_card(args.pipeline, args.vae_info)}")
    return 0
