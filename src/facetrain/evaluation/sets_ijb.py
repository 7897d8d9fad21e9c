"""Evaluation sets of IJB-B / IJB-C (InsightFace's packaging) and TinyFace, in the style of
:mod:`facetrain.evaluation.sets`.

* :func:`ijb`: every face of ``<prefix>_face_tid_mid.txt`` in file order, embedded from its loose crop *aligned* to
  the 112×112 ArcFace template from its five landmarks (:func:`facetrain.data.ijb.aligned_face`, the set's
  ``decode``), with the template / media / faceness arrays and the 1:1 and 1:N lists the protocol needs
  (:class:`facetrain.evaluation.protocols_ijb.IjbProtocol`).
* :func:`tinyface`: the probes, then the gallery-match images, then the distractors (the set's rows in that order),
  each resized to the evaluation size (:class:`facetrain.evaluation.protocols_ijb.TinyFaceProtocol`).

Files are read and checked by :func:`facetrain.data.ijb.read_ijb` and :func:`facetrain.data.tinyface.read_tinyface`
when the set is loaded, before anything is embedded; their messages name the file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from facetrain.data.decode import read_rgb
from facetrain.data.ijb import IjbSet, aligned_face, read_ijb
from facetrain.data.tinyface import read_tinyface
from facetrain.evaluation.sets import EvaluationSet
from facetrain.evaluation.tinyface import DISTRACTOR_LABEL

__all__ = ["IjbEvalSet", "TinyFaceEvalSet", "ijb", "resized_image", "tinyface"]

#: Side of the evaluation input (the 112×112 ArcFace template every backbone here takes).
EVAL_SIZE = 112


@dataclass
class IjbEvalSet(EvaluationSet):
    """IJB faces (rows in media-file order) and the arrays of :class:`facetrain.data.ijb.IjbSet`.

    Attributes:
        ijb: The parsed set: ``templates``, ``medias``, ``faceness`` (one per row), the 1:1 pairs and the 1:N lists.
    """

    ijb: IjbSet | None = None

    @property
    def has_search(self) -> bool:
        """The 1:N probe and gallery lists were found."""
        return self.ijb is not None and self.ijb.probe is not None and bool(self.ijb.galleries)


@dataclass
class TinyFaceEvalSet(EvaluationSet):
    """TinyFace rows: ``probes`` probe images, then ``matches`` gallery-match images, then the distractors.

    Attributes:
        labels: Identity of each row; distractors carry :data:`facetrain.evaluation.tinyface.DISTRACTOR_LABEL`.
        probes: Number of probe rows (first).
        matches: Number of gallery-match rows (next).
    """

    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    probes: int = 0
    matches: int = 0


def ijb(root: str, prefix: str = "ijbc", galleries: Sequence[str] = ("G1", "G2"), name: str = "ijbc") -> IjbEvalSet:
    """An IJB set in InsightFace's packaging (layout in :mod:`facetrain.data.ijb`).

    Args:
        root: The set's folder (``loose_crop/`` and ``meta/``).
        prefix: File prefix, ``ijbc`` or ``ijbb``.
        galleries: 1:N galleries (IJB-C ``G1, G2``; IJB-B ``S1, S2``), read when the probe list exists.
        name: The evaluation's name, for messages.

    Raises:
        FileNotFoundError: ``root`` or a listed file is missing.
        ValueError: A malformed or inconsistent list (the reader names the file and line).
    """
    if not Path(root).is_dir():
        raise FileNotFoundError(f"eval.{name}.root={str(root)!r} is not a directory (data/README.md § IJB-B and IJB-C)")
    parsed = read_ijb(root, prefix, tuple(galleries))
    options = {"images": len(parsed.images), "templates": int(np.unique(parsed.templates).size), "aligned": "5pt"}
    return IjbEvalSet(
        paths=np.asarray([str(parsed.path(i)) for i in range(len(parsed.images))]),
        # Loose crops are not what the backbone was trained on: each is warped to the 112×112 template from its
        # landmarks (InsightFace's norm_crop), as every published IJB number does.
        decode=partial(aligned_face, parsed),
        options=options,
        ijb=parsed,
    )


def resized_image(path: str, size: int = EVAL_SIZE) -> np.ndarray:
    """The uint8 RGB image at ``path``, resized to ``size × size`` when it is not.

    TinyFace faces are native low resolution (about 20 px a side) and the backbone takes 112×112. They are upsampled
    bilinearly (``cv2.INTER_LINEAR``): the interpolation of facetrain's 5-point alignment (``align_face``'s
    ``warpAffine``), so a low-resolution face is enlarged the way an aligned one is, with no ringing (bicubic
    overshoots at the sharp block edges of a 16-px JPEG). AdaFace's ``validation_lq`` loader applies no resize: it
    reads its own MTCNN-aligned copy, already warped to 112×112 (``aligned_pad_0.1_pad_high``).
    """
    image = read_rgb(path)
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return image


def tinyface(root: str, image_root: str | None = None, name: str = "tinyface") -> TinyFaceEvalSet:
    """TinyFace's test protocol (layout in :mod:`facetrain.data.tinyface`), images resized to 112×112.

    Args:
        root: The ``tinyface`` folder holding ``Testing_Set/`` with the two ``.mat`` lists.
        image_root: Folder of ``Probe/``, ``Gallery_Match/``, ``Gallery_Distractor/`` (e.g. AdaFace's aligned copy);
            None reads them from ``<root>/Testing_Set``.
        name: The evaluation's name, for messages.
    """
    if not Path(root).is_dir():
        raise FileNotFoundError(f"eval.{name}.root={str(root)!r} is not a directory (data/README.md § TinyFace)")
    parsed = read_tinyface(root, image_root)
    paths = np.asarray([str(p) for p in [*parsed.probe_paths, *parsed.match_paths, *parsed.distractor_paths]])
    labels = np.concatenate(
        [parsed.probe_labels, parsed.match_labels, np.full(len(parsed.distractor_paths), DISTRACTOR_LABEL)]
    ).astype(np.int64)
    return TinyFaceEvalSet(
        paths=paths,
        decode=lambda i: resized_image(str(paths[i])),
        options={"resize": f"{EVAL_SIZE}x{EVAL_SIZE} bilinear"},
        labels=labels,
        probes=len(parsed.probe_paths),
        matches=len(parsed.match_paths),
    )
