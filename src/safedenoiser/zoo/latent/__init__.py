"""The latent text-to-image testbed: a small diffusers ``AutoencoderKL`` trained on Fashion-MNIST (resized to 32x32
as the stock tools resize images; latents 4x8x8), a ``UNet2DConditionModel`` trained on its scaled latents by the same
trainer as ``fashion-t2i`` (``train --text --vae``), assembled as diffusers' own ``StableDiffusionPipeline`` with the
MiniLM text encoder (see docs/latent-testbed.md)."""
