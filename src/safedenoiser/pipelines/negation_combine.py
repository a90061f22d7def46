"""Several negation sets (one per concept, e.g. trousers and bags, each from ``negation build``) combined into one.

Every correction takes one :class:`~safedenoiser.negation.NegationSet`; its kernel estimators see the set as the
empirical distribution of the unsafe content. Concatenating sets is exactly the empirical distribution of their union
(each item weighs 1 / N_total), so the combined set is what "avoid any of these" means to the kernel estimators,
with each concept weighted by its number of items. Which set each item came from is kept in
``metadata['parts']`` (name, first row, count, source, content hash); :func:`part_of` reads it back per item.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from ..negation import NegationSet, NegationSetError

#: metadata keys that say which pipeline a set was built for (:func:`~safedenoiser.pipelines.hook.negation_differences`
#: checks them): every part must agree on them
COMPATIBILITY_PREFIXES = ("vae_", "pixel_")
COMPATIBILITY_KEYS = ("model", "resolution", "item_shape")


def _compatibility(negation: NegationSet) -> dict:
    return {k: v for k, v in negation.metadata.items() if k.startswith(COMPATIBILITY_PREFIXES) or k in COMPATIBILITY_KEYS}


def combine_sets(sets: Mapping[str, NegationSet], balance: bool = False) -> NegationSet:
    """One negation set holding every item of ``sets`` (name -> set), in the given order. Refused
    (:class:`~safedenoiser.negation.NegationSetError`, naming the sets) when the sets differ in item shape, space,
    storage dtype or the pipeline they were built for (metadata ``model``, ``vae_*``, ``pixel_*``, resolution).

    ``balance=True``: every item of a set of n items is repeated ``round(n_max / n)`` times, so that each concept
    weighs about the same in the kernel estimators whatever its number of images (exactly when n divides n_max);
    by default a concept weighs its share of the items."""
    if not sets:
        raise NegationSetError("no negation sets to combine")
    names = list(sets)
    first = sets[names[0]]
    for name in names[1:]:
        other = sets[name]
        for what, mine, theirs in (("item shape", first.item_shape, other.item_shape), ("space", first.space, other.space),
                                   ("dtype", first.dtype, other.dtype)):
            if mine != theirs:
                raise NegationSetError(f"cannot combine negation sets {names[0]!r} and {name!r}: {what} {mine} vs "
                                       f"{theirs}; build both for the same pipeline the same way")
        a, b = _compatibility(first), _compatibility(other)
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if differ:
            raise NegationSetError(f"cannot combine negation sets {names[0]!r} and {name!r}: they were built for "
                                   f"different pipelines ({', '.join(f'{k}: {a.get(k)!r} vs {b.get(k)!r}' for k in differ)})")
    largest = max(len(sets[n]) for n in names)
    repeats = {n: max(1, round(largest / len(sets[n]))) if balance else 1 for n in names}
    parts, start = [], 0
    for name in names:
        part = sets[name]
        count = len(part) * repeats[name]
        parts.append({"name": name, "start": start, "count": count, "items": len(part), "repeat": repeats[name],
                      "source": part.source, "content_hash": part.content_hash})
        start += count
    data = torch.cat([sets[n].data.to(first.device).repeat(repeats[n], *([1] * (sets[n].data.ndim - 1))) for n in names])
    metadata = {**_compatibility(first), "count": start, "parts": parts}
    return NegationSet(data, space=first.space, source=" + ".join(names), metadata=metadata,
                       compute_dtype=first.compute_dtype, chunk_size=first.chunk_size)


def part_of(negation: NegationSet) -> tuple[list[str], Tensor]:
    """(names, (N,) int64 index into names): which combined part each item came from; one part named after the
    set's source when the set was not combined."""
    parts = negation.metadata.get("parts")
    if not parts:
        return [negation.source or "negation"], torch.zeros(len(negation), dtype=torch.long)
    index = torch.full((len(negation),), -1, dtype=torch.long)
    for k, part in enumerate(parts):
        index[part["start"] : part["start"] + part["count"]] = k
    if bool((index < 0).any()) or sum(p["count"] for p in parts) != len(negation):
        raise NegationSetError(f"metadata 'parts' of {negation.source or 'this set'} does not cover its {len(negation)} items")
    return [p["name"] for p in parts], index
