"""Pronounceable, unique LFW-style ``First_Last`` names for the synthetic LFW- and YTF-format identities."""

from __future__ import annotations

import numpy as np

from facetrain.data.synthetic.seeds import STREAM_NAMES, keyed_rng

__all__ = ["make_names"]

_ONSETS = ["", "b", "br", "c", "ch", "d", "dr", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "r", "s", "sh",
           "st", "t", "tr", "v", "w", "z"]  # fmt: skip
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "nd", "rt", "x", "ck"]


def _word(rng: np.random.Generator, syllables: int) -> str:
    """A pronounceable capitalised word made of random syllables (ASCII letters only)."""
    word = "".join(
        _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] + _CODAS[rng.integers(len(_CODAS))]
        for _ in range(syllables)
    )
    return word.capitalize()


def make_names(seed: int, count: int) -> list[str]:
    """Unique LFW-style ``First_Last`` names, deterministic from ``seed``.

    Args:
        seed: Dataset seed.
        count: Number of names.

    Returns:
        ``count`` distinct names in generation order.
    """
    rng = keyed_rng(seed, STREAM_NAMES)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        name = f"{_word(rng, int(rng.integers(1, 4)))}_{_word(rng, int(rng.integers(2, 4)))}"
        if name not in seen and len(name) >= 5:
            seen.add(name)
            names.append(name)
    return names
