"""A small text-to-image diffusers pipeline trained by this project (Fashion-MNIST, MiniLM text encoder), its
prompt sets, the evasive-prompt search and the text-to-image benchmark.

``FashionTextPipeline`` is an ordinary ``DiffusionPipeline`` (unet, scheduler, text encoder, tokenizer), so
everything that works on Stable Diffusion here (the forward hook, negative prompts, every supported scheduler)
runs on it unchanged; it is the testbed that real SD weights cannot be on these machines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["FashionTextPipeline", "load_text_pipeline", "shipped_pipeline_path"]


def __getattr__(name: str) -> Any:
    """The pipeline's names, imported on first use (PEP 562): the ``t2i`` commands register without diffusers."""
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .pipeline import FashionTextPipeline, load_text_pipeline, shipped_pipeline_path
