"""The latent text-to-image testbed: a small diffusers ``AutoencoderKL`` trained on Fashion-MNIST (32x32, padded
with the background value; latents 4x8x8), a ``UNet2DConditionModel`` trained on its scaled latents by the same
trainer as ``fashion-t2i`` (``train --text --vae``), assembled as diffusers' own ``StableDiffusionPipeline`` with the
MiniLM text encoder (see docs/latent-testbed.md)."""
