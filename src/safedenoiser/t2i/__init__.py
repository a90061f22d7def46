"""A small text-to-image diffusers pipeline trained by this project (Fashion-MNIST, MiniLM text encoder), its
prompt sets, the evasive-prompt search and the text-to-image benchmark.

``FashionTextPipeline`` is an ordinary ``DiffusionPipeline`` (unet, scheduler, text encoder, tokenizer), so
everything that works on Stable Diffusion here (the forward hook, negative prompts, every supported scheduler)
runs on it unchanged; it is the testbed that real SD weights cannot be on these machines.
"""

from .pipeline import FashionTextPipeline, load_text_pipeline, shipped_pipeline_path

__all__ = ["FashionTextPipeline", "load_text_pipeline", "shipped_pipeline_path"]
