"""The default dataset: synthetic faces in the real CASIA-WebFace, LFW and YouTube Faces on-disk formats.

No real face data can be downloaded in every environment, yet the training, evaluation and protocol code must run
end to end on the same files they would read for the real benchmarks. It is a genuine open-set task: LFW- and
YTF-format identities never occur in the training set, so a model only scores well if it learns identity features
that transfer to unseen people.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from facetrain.data.protocols import write_lfw_pairs, write_ytf_splits
from facetrain.data.synthetic.jobs import Item, RenderJob, item_nuisance, render_job
from facetrain.data.synthetic.names import make_names
from facetrain.data.synthetic.pairs import N_FOLDS, across_pairs, fold_groups, pair_capacity_problem, within_pairs
from facetrain.data.synthetic.pool import run_jobs
from facetrain.data.synthetic.render import render_face_image
from facetrain.data.synthetic.seeds import (
    KIND_LFW,
    KIND_TRAIN,
    KIND_YTF,
    STREAM_IDENTITY,
    STREAM_PAIRS,
    keyed_rng,
)
from facetrain.data.synthetic.store import MANIFEST, ensure_dataset
from facetrain.data.synthetic.traits import sample_identity
from facetrain.utils.rules import Constraint, Interval, check_args

__all__ = ["FORMAT_VERSION", "SyntheticFaces"]

logger = logging.getLogger(__name__)

# Bump whenever the rendering or the layout changes, so existing datasets are regenerated instead of reused.
FORMAT_VERSION = 1
# The manifest's generator name: the module that wrote format 1 (a new name would regenerate every existing set).
GENERATOR = "facetrain.data.synthetic"
# Files and folders that ensure() itself writes; anything else under root is not ours to delete.
_OWN_ENTRIES = frozenset({"casia", "lfw", "ytf", "pairs.txt"})


def _count(low: int, high: float = float("inf")) -> Interval:
    return Interval(low, high, integer=True)


@dataclass(frozen=True)
class SyntheticFaces:
    """The synthetic face dataset: CASIA-style training tree, LFW images + ``pairs.txt``, YTF frames + ``splits.txt``.

    Call :meth:`ensure` to generate it (once) under ``root``. The defaults are tuned so that the default training
    run learns the task (high LFW accuracy after a few CPU epochs) while raw pixels and an untrained network do not.

    Attributes:
        root: Dataset directory.
        seed: Seed of every random draw; same parameters give byte-identical files.
        num_train_ids: Training identities (CASIA-WebFace layout).
        images_per_train_id: Images per training identity.
        num_lfw_ids: Held-out identities in LFW layout (split into 10 disjoint folds).
        images_per_lfw_id: Images per LFW identity.
        lfw_pairs_per_fold: Matched pairs per fold, and as many mismatched pairs.
        num_ytf_ids: Held-out identities in YouTube Faces layout (split into 10 disjoint splits).
        videos_per_ytf_id: Videos per YTF identity.
        frames_per_video: Frames per video.
        ytf_pairs_per_split: Same-person video pairs per split, and as many different-person pairs.
        image_size: Width and height of every image.
        jpeg_quality: Quality of the saved JPEG files.
        workers: Generation processes (does not change the output).
        ijbc: The IJB-C-format companion set (:class:`facetrain.data.synthetic.ijb.SyntheticIjbc`) or None; its
            evaluation set generates it on first use (``eval.ijbc.source``), not :meth:`ensure`.
        tinyface: The TinyFace-format companion set (``SyntheticTinyFace``) or None, likewise.
    """

    root: str | os.PathLike[str]
    seed: int = 0
    num_train_ids: int = 300
    images_per_train_id: int = 20
    num_lfw_ids: int = 300
    images_per_lfw_id: int = 5
    lfw_pairs_per_fold: int = 150
    num_ytf_ids: int = 100
    videos_per_ytf_id: int = 3
    frames_per_video: int = 8
    ytf_pairs_per_split: int = 25
    image_size: int = 112
    jpeg_quality: int = 95
    workers: int = 2
    ijbc: Any = None
    tinyface: Any = None

    # Enforced on the config (``synthetic.<key>``) before anything is built, and again by __post_init__.
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "seed": _count(0),
        "num_train_ids": _count(1, 10**7),
        "images_per_train_id": _count(1, 999),  # file names 001.jpg .. 999.jpg
        "num_lfw_ids": _count(2 * N_FOLDS),  # every fold needs two people for a mismatched pair
        "images_per_lfw_id": _count(2, 9999),  # Name_0001.jpg .. Name_9999.jpg; a matched pair needs two
        "lfw_pairs_per_fold": _count(1),
        "num_ytf_ids": _count(2 * N_FOLDS),
        "videos_per_ytf_id": _count(2),  # a same-person pair needs two videos
        "frames_per_video": _count(1),
        "ytf_pairs_per_split": _count(1),
        "image_size": _count(32),
        "jpeg_quality": _count(1, 100),
        "workers": _count(1),
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        check_args(self, prefix="synthetic")

    @classmethod
    def check_config(cls, values: dict[str, Any]) -> str | None:
        """Whether each fold can supply the LFW and YTF pairs asked for (keys not given take their defaults)."""
        v = {f.name: f.default for f in fields(cls) if f.default is not MISSING} | values
        for wanted, ids, per_id in (
            ("lfw_pairs_per_fold", "num_lfw_ids", "images_per_lfw_id"),
            ("ytf_pairs_per_split", "num_ytf_ids", "videos_per_ytf_id"),
        ):
            problem = pair_capacity_problem(wanted, v[wanted], v[ids] // N_FOLDS, v[per_id])
            if problem:
                return problem
        return None

    # -- layout --------------------------------------------------------------------------------------------------

    @property
    def train_root(self) -> Path:
        """CASIA-WebFace-style tree ``0000000/001.jpg``."""
        return Path(self.root) / "casia"

    @property
    def lfw_root(self) -> Path:
        """LFW-style tree ``Name/Name_0001.jpg``."""
        return Path(self.root) / "lfw"

    @property
    def lfw_pairs(self) -> Path:
        """LFW View-2 ``pairs.txt`` (beside the ``lfw/`` folder, as distributed)."""
        return Path(self.root) / "pairs.txt"

    @property
    def ytf_root(self) -> Path:
        """YouTube Faces tree ``Name/<video>/aligned_detect_<video>.<frame>.jpg``."""
        return Path(self.root) / "ytf" / "aligned_images_DB"

    @property
    def ytf_splits(self) -> Path:
        """YouTube Faces ``splits.txt``."""
        return Path(self.root) / "ytf" / "splits.txt"

    @property
    def manifest_path(self) -> Path:
        """JSON record of the parameters the dataset under ``root`` was generated with."""
        return Path(self.root) / MANIFEST

    def params(self) -> dict[str, int]:
        """Parameters that determine the generated files (everything except ``root`` and ``workers``)."""
        skip = ("root", "workers", "ijbc", "tinyface")  # the companion sets keep their own manifests
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def lfw_names(self) -> list[str]:
        """Names of the LFW-format identities (index = identity number)."""
        # Sorted, so identity order (and hence pairs.txt order) is alphabetical as in the official file.
        return sorted(make_names(self.seed, self.num_lfw_ids + self.num_ytf_ids)[: self.num_lfw_ids])

    def ytf_names(self) -> list[str]:
        """Names of the YTF-format identities, disjoint from the LFW names."""
        return sorted(make_names(self.seed, self.num_lfw_ids + self.num_ytf_ids)[self.num_lfw_ids :])

    def render(self, split: str, identity: int, image: int, video: int = 0) -> np.ndarray:
        """Renders one image exactly as :meth:`ensure` does, before JPEG encoding (for inspection and tests).

        Args:
            split: ``"train"``, ``"lfw"`` or ``"ytf"``.
            identity: 0-based identity index (folder order for train; sorted-name order for LFW and YTF).
            image: 0-based image index (frame index for YTF; file numbers are this + 1).
            video: 0-based video index (YTF only).

        Returns:
            ``image_size`` x ``image_size`` x 3 uint8 RGB image.
        """
        kinds = {"train": KIND_TRAIN, "lfw": KIND_LFW, "ytf": KIND_YTF}
        if split not in kinds:
            raise ValueError(f"split must be one of {sorted(kinds)}, got {split!r}")
        kind = kinds[split]
        item = Item("", video, image, video=True) if kind == KIND_YTF else Item("", image)
        ident = sample_identity(keyed_rng(self.seed, STREAM_IDENTITY, kind, identity))
        return render_face_image(ident, item_nuisance(self.seed, kind, identity, item), self.image_size)

    # -- generation ----------------------------------------------------------------------------------------------

    def ensure(self) -> SyntheticFaces:
        """Generates the dataset under ``root`` unless an identical one is already there.

        Idempotent and cheap when ``root/manifest.json`` matches the parameters; otherwise written atomically under
        a lock (:func:`facetrain.data.synthetic.store.ensure_dataset`).

        Returns:
            ``self``, for chaining.

        Raises:
            ValueError: If ``root`` holds files that this class did not write (they are never deleted).
        """
        start = time.perf_counter()
        manifest = self._manifest()
        written = ensure_dataset(Path(self.root), manifest, _OWN_ENTRIES, self._write, "synthetic faces")
        if written is not None:
            c = manifest["counts"]
            logger.info(
                "Generated synthetic faces at %s in %.1fs: %d images (train %d ids x %d, LFW %d ids / %d pairs, "
                "YTF %d ids / %d videos / %d pairs)",
                self.root, time.perf_counter() - start, written, self.num_train_ids, self.images_per_train_id,
                self.num_lfw_ids, c["lfw_pairs"], self.num_ytf_ids, self.num_ytf_ids * self.videos_per_ytf_id,
                c["ytf_pairs"],
            )  # fmt: skip
        return self

    def _manifest(self) -> dict[str, Any]:
        """What ``manifest.json`` must hold for the dataset under ``root`` to be reused."""
        # Keys in sorted order at every level: the layout of the format-1 files already on disk.
        counts = {
            "lfw_images": self.num_lfw_ids * self.images_per_lfw_id,
            "lfw_pairs": N_FOLDS * 2 * self.lfw_pairs_per_fold,
            "train_images": self.num_train_ids * self.images_per_train_id,
            "ytf_frames": self.num_ytf_ids * self.videos_per_ytf_id * self.frames_per_video,
            "ytf_pairs": N_FOLDS * 2 * self.ytf_pairs_per_split,
        }
        params = dict(sorted(self.params().items()))
        return {"counts": counts, "format_version": FORMAT_VERSION, "generator": GENERATOR, "params": params}

    def _write(self, base: Path) -> int:
        """Writes the images and the protocol files under ``base``; returns the number of images."""
        written = run_jobs(render_job, self._jobs(base), self.workers)
        self._write_protocols(base)
        return written

    def _jobs(self, base: Path) -> list[RenderJob]:
        """One rendering job per identity, writing into the tree under ``base``."""
        common = {"seed": self.seed, "size": self.image_size, "quality": self.jpeg_quality}
        jobs = [
            RenderJob(kind=KIND_TRAIN, ident=i, directory=str(base / "casia" / f"{i:07d}"),
                      items=tuple(Item(f"{k + 1:03d}.jpg", k) for k in range(self.images_per_train_id)), **common)
            for i in range(self.num_train_ids)
        ]  # fmt: skip
        for i, name in enumerate(self.lfw_names()):
            items = tuple(Item(f"{name}_{k + 1:04d}.jpg", k) for k in range(self.images_per_lfw_id))
            jobs.append(RenderJob(kind=KIND_LFW, ident=i, directory=str(base / "lfw" / name), items=items, **common))
        ytf_dir = base / "ytf" / "aligned_images_DB"
        for i, name in enumerate(self.ytf_names()):
            items = tuple(
                Item(f"{v}/aligned_detect_{v}.{f + 1}.jpg", v, f, video=True)
                for v in range(self.videos_per_ytf_id)
                for f in range(self.frames_per_video)
            )
            jobs.append(RenderJob(kind=KIND_YTF, ident=i, directory=str(ytf_dir / name), items=items, **common))
        return jobs

    def _write_protocols(self, base: Path) -> None:
        """Writes ``pairs.txt`` and ``ytf/splits.txt`` with identity-disjoint folds."""
        names = self.lfw_names()
        rng = keyed_rng(self.seed, STREAM_PAIRS, KIND_LFW)
        folds = []
        for ids in fold_groups(rng, self.num_lfw_ids):
            matched = [
                (names[i], a + 1, b + 1)
                for i, a, b in within_pairs(rng, ids, self.images_per_lfw_id, self.lfw_pairs_per_fold)
            ]
            mismatched = [
                (names[i], a + 1, names[j], b + 1)
                for i, a, j, b in across_pairs(rng, ids, self.images_per_lfw_id, self.lfw_pairs_per_fold)
            ]
            folds.append((matched, mismatched))
        write_lfw_pairs(base / "pairs.txt", folds)
        names = self.ytf_names()
        rng = keyed_rng(self.seed, STREAM_PAIRS, KIND_YTF)
        rows = []
        for split, ids in enumerate(fold_groups(rng, self.num_ytf_ids), start=1):
            same = [
                (f"{names[i]}/{a}", f"{names[i]}/{b}", 1)
                for i, a, b in within_pairs(rng, ids, self.videos_per_ytf_id, self.ytf_pairs_per_split)
            ]
            diff = [
                (f"{names[i]}/{a}", f"{names[j]}/{b}", 0)
                for i, a, j, b in across_pairs(rng, ids, self.videos_per_ytf_id, self.ytf_pairs_per_split)
            ]
            rows.extend((split, k, a, b, s) for k, (a, b, s) in enumerate(same + diff, start=1))
        write_ytf_splits(base / "ytf" / "splits.txt", rows)
