"""Captions for the Fashion-MNIST text-to-image model: templates x synonyms per class for training, and held-out
paraphrases (templates and wordings that never occur in training) to measure generalisation.

``CLASS_WORDS`` lists every word the training captions use for a class; an *evasive* prompt for a class uses
none of them (see :mod:`.prompts`).
"""

from __future__ import annotations

import re

from ..images.data import FASHION_CLASSES

#: Noun phrases per class used in training captions.
TRAIN_PHRASES: dict[str, tuple[str, ...]] = {
    "t-shirt": ("a t-shirt", "a tee", "a top", "a tank top", "a short-sleeved top"),
    "trouser": ("trousers", "a pair of trousers", "pants", "a pair of pants", "slacks", "jeans"),
    "pullover": ("a pullover", "a sweater", "a jumper", "a knitted sweater", "a hoodie"),
    "dress": ("a dress", "a gown", "a frock", "a sundress", "a summer dress"),
    "coat": ("a coat", "a jacket", "a parka", "an overcoat", "a winter coat"),
    "sandal": ("a sandal", "sandals", "a flip-flop", "a strappy sandal", "a summer sandal"),
    "shirt": ("a shirt", "a blouse", "a button-up shirt", "a dress shirt", "a collared shirt"),
    "sneaker": ("a sneaker", "sneakers", "a trainer", "a running shoe", "a tennis shoe"),
    "bag": ("a bag", "a handbag", "a purse", "a tote bag", "a shoulder bag"),
    "ankle-boot": ("an ankle boot", "a boot", "ankle boots", "a bootie", "a chelsea boot"),
}

TRAIN_TEMPLATES: tuple[str, ...] = (
    "{}", "a photo of {}", "a picture of {}", "an image of {}", "a black and white photo of {}",
    "a product photo of {}", "a small photo of {}", "a grey picture of {}",
)

#: Held-out captions: new templates, and new wordings of the same request. None occurs in training.
HELD_OUT_PHRASES: dict[str, tuple[str, ...]] = {
    "t-shirt": ("a plain t-shirt", "a cotton tee"),
    "trouser": ("long trousers", "a pair of jeans"),
    "pullover": ("a warm pullover", "a wool sweater"),
    "dress": ("an elegant dress", "a long gown"),
    "coat": ("a long coat", "a warm jacket"),
    "sandal": ("an open sandal", "beach sandals"),
    "shirt": ("a formal shirt", "a long-sleeved blouse"),
    "sneaker": ("a sports sneaker", "white sneakers"),
    "bag": ("a leather bag", "a small handbag"),
    "ankle-boot": ("a leather ankle boot", "winter boots"),
}
HELD_OUT_TEMPLATES: tuple[str, ...] = ("a catalogue picture of {}", "{} on a plain background",
                                       "a low resolution photo of {}")


def training_captions(name: str) -> list[str]:
    """Every training caption of class ``name`` (templates x phrases)."""
    return [t.format(p) for p in TRAIN_PHRASES[name] for t in TRAIN_TEMPLATES]


def held_out_captions(name: str) -> list[str]:
    """Held-out paraphrases of class ``name``: new templates over training phrases, and new phrases."""
    training = set(training_captions(name))
    out = [t.format(p) for t in HELD_OUT_TEMPLATES for p in TRAIN_PHRASES[name][:2]]
    out += [t.format(p) for p in HELD_OUT_PHRASES[name] for t in ("{}", "a photo of {}")]
    return [c for c in out if c not in training]


def words(text: str) -> set[str]:
    """Lower-case words of ``text`` (letters, digits and inner hyphens)."""
    return set(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower()))


#: Articles and template words shared by every class; the rest of a class's training vocabulary names it.
_COMMON = words(" ".join(TRAIN_TEMPLATES).replace("{}", "")) | {"a", "an", "pair", "of"}


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


CLASS_WORDS: dict[str, frozenset[str]] = {
    name: frozenset(f(w) for p in phrases for w in words(p) if w not in _COMMON for f in (str, _singular))
    for name, phrases in TRAIN_PHRASES.items()
}

assert tuple(TRAIN_PHRASES) == FASHION_CLASSES, "one phrase list per Fashion-MNIST class, in label order"
