"""Synthetic TinyFace-format evaluation set (Cheng et al., "Low-Resolution Face Recognition", ACCV 2018).

The test layout that :mod:`facetrain.data.tinyface` reads: ``Testing_Set/Probe``, ``Gallery_Match``,
``Gallery_Distractor`` and the two ``.mat`` lists. Every image is rendered at 112 px and shrunk to a native low
resolution (TinyFace's faces average about 20×16 px).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.io

from facetrain.data.synthetic.companion import CompanionSet
from facetrain.data.synthetic.jobs import Item, RenderJob, render_job
from facetrain.data.synthetic.pool import run_jobs
from facetrain.data.synthetic.seeds import KIND_TINYFACE, KIND_TINYFACE_DISTRACTOR, STREAM_PROTOCOL, keyed_rng
from facetrain.utils.rules import Constraint, Interval, check_args

__all__ = ["SyntheticTinyFace"]

RENDER_SIZE = 112  # every image is drawn at the aligned size, then shrunk


def _mat_cell(names: list[str]) -> np.ndarray:
    """A MATLAB N×1 cell array of strings (the official lists' ``gallery_set`` / ``probe_set``)."""
    cell = np.empty((len(names), 1), dtype=object)
    cell[:, 0] = names
    return cell


@dataclass(frozen=True)
class SyntheticTinyFace(CompanionSet):
    """TinyFace-format set: ``root/Testing_Set/{Probe,Gallery_Match,Gallery_Distractor}`` and the two ``.mat`` lists.

    Attributes:
        root: Output folder (read with ``facetrain.data.tinyface.read_tinyface(root)``).
        seed: Seed of every draw.
        num_ids: Probe identities, each with gallery-match images.
        probes_per_id: Probe images per identity (``<id>_<k>.jpg``).
        gallery_per_id: Gallery-match images per identity.
        num_distractors: Distractor images, one per further identity.
        min_size: Smallest side of a low-resolution image.
        max_size: Largest side (each image draws its size in between).
        jpeg_quality: Quality of the saved JPEG files.
        workers: Generation processes (does not change the output).
    """

    root: str | os.PathLike[str]
    seed: int = 0
    num_ids: int = 100
    probes_per_id: int = 2
    gallery_per_id: int = 2
    num_distractors: int = 300
    min_size: int = 16
    max_size: int = 28
    jpeg_quality: int = 95
    workers: int = 2

    own_entries: ClassVar[frozenset[str]] = frozenset({"Testing_Set"})
    # Enforced on the config (``synthetic.tinyface.<key>``) before anything is built, and again by __post_init__.
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "seed": Interval(0, integer=True),
        "num_ids": Interval(2, integer=True),
        "probes_per_id": Interval(1, integer=True),
        "gallery_per_id": Interval(1, integer=True),
        "num_distractors": Interval(0, integer=True),
        "min_size": Interval(8, RENDER_SIZE, integer=True),
        "max_size": Interval(8, RENDER_SIZE, integer=True),  # and >= min_size (check_config)
        "jpeg_quality": Interval(1, 100, integer=True),
        "workers": Interval(1, integer=True),
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        check_args(self, prefix="synthetic.tinyface")

    @classmethod
    def check_config(cls, values: dict[str, Any]) -> str | None:
        """The size range is not empty (checked when both ends are given)."""
        low, high = values.get("min_size"), values.get("max_size")
        if low is not None and high is not None and high < low:
            return f"max_size={high} must be >= min_size={low}"
        return None

    def _write(self, base: Path) -> int:
        testing = base / "Testing_Set"
        rng = keyed_rng(self.seed, STREAM_PROTOCOL, KIND_TINYFACE)
        jobs: list[RenderJob] = []
        lists: dict[str, tuple[list[str], list[int]]] = {"Probe": ([], []), "Gallery_Match": ([], [])}
        for ident in range(self.num_ids):
            for folder, first, count in (("Probe", 0, self.probes_per_id), ("Gallery_Match", self.probes_per_id,
                                                                              self.gallery_per_id)):  # fmt: skip
                items = tuple(Item(f"{ident + 1}_{first + k + 1}.jpg", first + k) for k in range(count))
                jobs.append(self._job(KIND_TINYFACE, ident, str(testing / folder), items, rng))
                lists[folder][0].extend(item.name for item in items)
                lists[folder][1].extend([ident + 1] * count)
        for d in range(self.num_distractors):
            item = (Item(f"{self.num_ids + d + 1}_1.jpg", 0),)
            jobs.append(self._job(KIND_TINYFACE_DISTRACTOR, d, str(testing / "Gallery_Distractor"), item, rng))
        (testing / "Gallery_Distractor").mkdir(parents=True)
        written = run_jobs(render_job, jobs, self.workers)
        for mat, folder, key in (("gallery_match_img_ID_pairs.mat", "Gallery_Match", "gallery"),
                                 ("probe_img_ID_pairs.mat", "Probe", "probe")):  # fmt: skip
            names, ids = lists[folder]
            scipy.io.savemat(
                testing / mat, {f"{key}_set": _mat_cell(names), f"{key}_ids": np.array(ids, np.float64)[:, None]}
            )
        return written

    def _job(
        self, kind: int, ident: int, directory: str, items: tuple[Item, ...], rng: np.random.Generator
    ) -> RenderJob:
        """One identity's job, each item with its own native low resolution drawn from ``rng``."""
        sizes = rng.integers(self.min_size, self.max_size + 1, len(items))
        items = tuple(replace(item, out_size=int(s)) for item, s in zip(items, sizes, strict=True))
        return RenderJob(self.seed, kind, ident, RENDER_SIZE, self.jpeg_quality, directory, items)
