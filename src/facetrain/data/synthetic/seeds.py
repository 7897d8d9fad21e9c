"""Seed keys of the synthetic sets: every random draw has its own generator, keyed by what it draws.

Each image, video, name list and protocol draw gets ``numpy.random.default_rng([seed, stream, kind, *key])``, so a
file is a pure function of the dataset seed and its own key: a process pool writes byte-identical files in any order,
and one set's parameters never shift another set's draws. All kinds and streams are allocated here, in one place,
so that two sets can never share a key by accident.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "KIND_IJBC",
    "KIND_LFW",
    "KIND_TINYFACE",
    "KIND_TINYFACE_DISTRACTOR",
    "KIND_TRAIN",
    "KIND_YTF",
    "STREAM_IDENTITY",
    "STREAM_IMAGE",
    "STREAM_MOTION",
    "STREAM_NAMES",
    "STREAM_PAIRS",
    "STREAM_PLACEMENT",
    "STREAM_PROTOCOL",
    "STREAM_VIDEO",
    "keyed_rng",
]

# Who is drawn: the people of each set are distinct because their kind is part of every key.
KIND_TRAIN, KIND_LFW, KIND_YTF, KIND_IJBC, KIND_TINYFACE, KIND_TINYFACE_DISTRACTOR = range(6)
# What is drawn: identity traits, a still's conditions, a video's base conditions, a video's motion, the names, the
# LFW/YTF pair lists, the loose-crop placement of an IJB-C media and the IJB-C/TinyFace protocol draws.
(
    STREAM_IDENTITY,
    STREAM_IMAGE,
    STREAM_VIDEO,
    STREAM_MOTION,
    STREAM_NAMES,
    STREAM_PAIRS,
    STREAM_PLACEMENT,
    STREAM_PROTOCOL,
) = range(8)


def keyed_rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    """The generator of one stream and key; keys are zero-padded to a fixed length so kinds never alias."""
    parts = list(key) + [0] * (4 - len(key))
    return np.random.default_rng([seed, stream, *parts])
