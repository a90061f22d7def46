"""An EDM-preconditioned diffusers ``UNet2DModel`` as a denoiser on the seam, and its checkpoint format.

Preconditioning (Karras et al. 2022, "Elucidating the design space", Table 1):

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise),   c_skip = sd^2 / (sigma^2 + sd^2),
    c_out = sigma sd / sqrt(sigma^2 + sd^2),   c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4

with sd = sigma_data. Class-conditional models embed ``num_classes + 1`` labels; the last one is the null
class used for classifier-free guidance (label ``None`` means null).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ... import fileio
from ...models.guidance import GuidedDenoiser

CHECKPOINT_FORMAT = "safedenoiser.edm-unet2d"


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this architecture, or one that does not match its own config."""


def unet_config(image_size: int = 28, channels: int = 1, widths: Sequence[int] = (32, 64, 64),
                layers_per_block: int = 1, attention: bool = True, num_classes: int = 0) -> dict[str, Any]:
    """A small UNet2DModel config: one down/up block per width, attention at the lowest resolution."""
    depth = len(widths)
    down = ["DownBlock2D"] * depth
    up = ["UpBlock2D"] * depth
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    config = dict(sample_size=image_size, in_channels=channels, out_channels=channels, block_out_channels=list(widths),
                  layers_per_block=layers_per_block, down_block_types=down, up_block_types=up,
                  norm_num_groups=min(8, min(widths)), attention_head_dim=None if not attention else min(widths))
    if num_classes:
        config["num_class_embeds"] = num_classes + 1
    return config


class EDMUNet(nn.Module):
    """``D(x, sigma, class_labels=None) -> x0`` with EDM preconditioning around a diffusers UNet2DModel."""

    def __init__(self, unet_kwargs: dict[str, Any], *, sigma_data: float = 0.5, class_names: Sequence[str] = (),
                 num_classes: int = 0):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet_kwargs = dict(unet_kwargs)
        self.unet = UNet2DModel(**self.unet_kwargs)
        self.sigma_data = float(sigma_data)
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names)
        if self.num_classes and self.unet_kwargs.get("num_class_embeds") != self.num_classes + 1:
            raise CheckpointError("a class-conditional UNet needs num_class_embeds = num_classes + 1 (null class)")

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.unet_kwargs["sample_size"]
        return (self.unet_kwargs["in_channels"], size, size)

    def labels(self, class_labels: Tensor | int | None, batch: int, device: torch.device) -> Tensor | None:
        """(B,) long labels; None means the null class. None for unconditional models."""
        if not self.num_classes:
            if class_labels is not None:
                raise ValueError("this model is unconditional: it takes no class_labels")
            return None
        if class_labels is None:
            return torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
        return labels.expand(batch) if labels.numel() == 1 else labels

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | int | None = None) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        s = sigma[:, None, None, None]
        sd = self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        xf = x.to(torch.float32)
        out = self.unet(c_in * xf, c_noise, class_labels=self.labels(class_labels, x.shape[0], x.device)).sample
        return (c_skip * xf + c_out * out).to(x.dtype)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def header(self, extra: dict[str, Any] | None = None) -> dict[str, str]:
        return {"format": CHECKPOINT_FORMAT, "unet": json.dumps(self.unet_kwargs, sort_keys=True),
                "sigma_data": repr(self.sigma_data), "num_classes": str(self.num_classes),
                "class_names": json.dumps(list(self.class_names)), "info": json.dumps(extra or {}, sort_keys=True)}

    def save(self, path: str | Path, info: dict[str, Any] | None = None) -> None:
        """safetensors with the config in the header, written atomically."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.unet.state_dict().items()}
        fileio.save_safetensors(tensors, path, self.header(info))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> EDMUNet:
    """Build the model a checkpoint describes and load its weights (in eval mode, gradients off)."""
    tensors, header = fileio.read_safetensors(path, CHECKPOINT_FORMAT, what="checkpoint", error=CheckpointError,
                                              device=str(device))
    model = EDMUNet(json.loads(header["unet"]), sigma_data=float(header["sigma_data"]),
                    class_names=json.loads(header.get("class_names", "[]")), num_classes=int(header["num_classes"]))
    expected = model.unet.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [k for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{path}: weights do not match the architecture in its header "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {mismatched[:3]})")
    model.unet.load_state_dict(tensors)
    model.info = json.loads(header.get("info", "{}"))
    return model.to(device).eval().requires_grad_(False)


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The ``info`` dict (training command, steps, loss ...) stored in a checkpoint header."""
    return json.loads(fileio.read_safetensors(path, what="checkpoint", error=CheckpointError, keys=())[1].get("info", "{}"))


class ClassifierFreeGuidance(GuidedDenoiser):
    """D_null + w (D_c - D_null) (Ho & Salimans 2022); with ``negative_labels`` the null branch is replaced by
    the negative class: D_neg + w (D_c - D_neg) (negative-class guidance). w = 1 is the plain conditional.
    The combination lives in :mod:`safedenoiser.models.guidance`."""

    def __init__(self, model: EDMUNet, guidance: float = 1.0, negative_labels: Tensor | int | None = None):
        if not model.num_classes:
            raise ValueError("classifier-free guidance needs a class-conditional model")
        super().__init__(model, guidance, negative=None if negative_labels is None else {"class_labels": negative_labels})
        self.model, self.negative_labels = model, negative_labels

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | int | None = None) -> Tensor:
        return super().__call__(x, sigma, class_labels=class_labels)
