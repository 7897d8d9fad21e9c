"""Reader of the TinyFace test protocol: probe and gallery-match lists (MATLAB ``.mat``) and the distractor folder.

TinyFace (Cheng, Zhu, Gong, "Low-Resolution Face Recognition", ACCV 2018; QMUL,
https://qmul-tinyface.github.io/) unpacks to ``tinyface/`` holding ``Training_Set/`` and::

    Testing_Set/
    ├── gallery_match_img_ID_pairs.mat   gallery_set (cell of file names), gallery_ids (numbers), 4,443 entries
    ├── probe_img_ID_pairs.mat           probe_set, probe_ids, 3,728 entries
    ├── Gallery_Match/<name>.jpg
    ├── Probe/<name>.jpg
    └── Gallery_Distractor/<name>.jpg    153,428 images of people outside the probe set

The variable names are those of the official evaluation script (``gallery_match_img_id_pairs['gallery_ids']``,
``probe_img_ID_pairs['probe_ids']``) and of AdaFace ``validation_lq/tinyface_helper.py`` (github.com/mk-minchul/AdaFace
@ c60eaa7, ``TinyFaceTest.__init__``: ``loadmat(.../Testing_Set/gallery_match_img_ID_pairs.mat)['gallery_set']``,
``p[0].item()`` per cell; ``probe_img_ID_pairs.mat`` with ``probe_set``; every image file under
``Gallery_Distractor`` by ``os.walk``, extensions ``.jpg``, ``.png``, ``.jpeg``). AdaFace reads the images from its own
MTCNN-aligned copy with the same three sub-folders (``aligned_pad_0.1_pad_high/{Probe,Gallery_Match,
Gallery_Distractor}``): ``image_root`` points there, the lists stay in ``Testing_Set``. AdaFace takes the label from the
file name prefix (``int(name.split('_')[0])``, which relies on the names starting with their id); here it is the
``.mat`` id of the official script.

Every problem stops the read before any image is decoded, naming the file and entry: a missing ``.mat`` file or
variable, lists of different lengths, an id that is not an integer, a listed image absent from disk, a missing
distractor folder. The protocol is :mod:`facetrain.evaluation.tinyface`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

__all__ = ["IMAGE_EXTENSIONS", "TinyFaceSet", "read_mat_list", "read_tinyface"]

log = logging.getLogger(__name__)

#: File types AdaFace collects from the image folders (``get_all_files``).
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg")
GALLERY_MAT, PROBE_MAT = "gallery_match_img_ID_pairs.mat", "probe_img_ID_pairs.mat"
GALLERY_DIR, PROBE_DIR, DISTRACTOR_DIR = "Gallery_Match", "Probe", "Gallery_Distractor"


@dataclass(frozen=True)
class TinyFaceSet:
    """The TinyFace test images and labels, in list order (distractors sorted by path).

    Attributes:
        probe_paths: Probe images.
        probe_labels: ``(P,)`` int64 identities.
        match_paths: Gallery-match images.
        match_labels: ``(G,)`` int64 identities.
        distractor_paths: Distractor images (no label: they match no probe).
    """

    probe_paths: list[Path]
    probe_labels: np.ndarray
    match_paths: list[Path]
    match_labels: np.ndarray
    distractor_paths: list[Path]


def _cell_strings(value: np.ndarray, path: Path, key: str) -> list[str]:
    """File names from a MATLAB cell array of strings (object array) or a char matrix (string array)."""
    flat = np.asarray(value).ravel()
    names = []
    for index, item in enumerate(flat):
        # A cell holds a 1-element string array (AdaFace: p[0].item()); a char matrix row is already a string.
        inner = np.asarray(item).ravel()
        if inner.size != 1 or inner.dtype.kind not in "US":
            raise ValueError(f"{path}: {key}[{index}] is not a file name (got {item!r})")
        names.append(str(inner[0]).strip())
    return names


def _integer_ids(value: np.ndarray, path: Path, key: str) -> np.ndarray:
    flat = np.asarray(value).ravel()
    if flat.dtype.kind not in "iuf":
        raise ValueError(f"{path}: {key} must be numbers, got dtype {flat.dtype}")
    bad = np.flatnonzero(~np.isfinite(flat.astype(np.float64)) | (flat != np.round(flat)))
    if bad.size:
        raise ValueError(f"{path}: {key}[{int(bad[0])}] = {flat[bad[0]].item()!r} is not an integer identity")
    return flat.astype(np.int64)


def read_mat_list(path: str | os.PathLike[str], names_key: str, ids_key: str) -> tuple[list[str], np.ndarray]:
    """File names and identities of one TinyFace ``.mat`` list.

    Args:
        path: ``gallery_match_img_ID_pairs.mat`` or ``probe_img_ID_pairs.mat``.
        names_key: ``gallery_set`` or ``probe_set``.
        ids_key: ``gallery_ids`` or ``probe_ids``.

    Raises:
        FileNotFoundError: The file is missing.
        ValueError: Unreadable file, a missing variable, a non-name entry, a non-integer id, or lists of
            different lengths; the message names the file and the entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TinyFace list {path} does not exist (data/README.md § TinyFace)")
    try:
        content = scipy.io.loadmat(path)
    except (ValueError, OSError, TypeError) as error:
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({error})") from None
    for key in (names_key, ids_key):
        if key not in content:
            found = sorted(k for k in content if not k.startswith("__"))
            raise ValueError(f"{path}: variable {key!r} is missing (it holds {found})")
    names = _cell_strings(content[names_key], path, names_key)
    ids = _integer_ids(content[ids_key], path, ids_key)
    if len(names) != len(ids):
        raise ValueError(f"{path}: {names_key} has {len(names)} entries but {ids_key} has {len(ids)}")
    return names, ids


def _listed_images(mat: Path, key: str, folder: Path, names: list[str]) -> list[Path]:
    """Paths of the listed images under ``folder``; refuses (naming the first) if any is absent."""
    paths = [folder / name for name in names]
    missing = [(i, p) for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        index, first = missing[0]
        raise FileNotFoundError(
            f"{mat}: {key}[{index}] = {names[index]!r} is listed but {first} does not exist"
            + (f" ({len(missing)} listed images are missing)" if len(missing) > 1 else "")
        )
    return paths


def _distractors(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"TinyFace distractor folder {folder} does not exist (data/README.md § TinyFace)")
    found = sorted(Path(d) / f for d, _, files in os.walk(folder) for f in files if Path(f).suffix in IMAGE_EXTENSIONS)
    if not found:
        log.warning("TinyFace: %s holds no images; identification runs without distractors", folder)
    return found


def read_tinyface(root: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None) -> TinyFaceSet:
    """Reads the TinyFace test protocol.

    Args:
        root: The ``tinyface`` folder holding ``Testing_Set/`` with the two ``.mat`` lists.
        image_root: Folder holding ``Probe/``, ``Gallery_Match/`` and ``Gallery_Distractor/`` (e.g. AdaFace's
            aligned copy ``aligned_pad_0.1_pad_high``); default ``<root>/Testing_Set``.

    Returns:
        The images and labels; nothing is decoded.
    """
    lists = Path(root) / "Testing_Set"
    images = Path(image_root) if image_root is not None else lists
    g_names, g_ids = read_mat_list(lists / GALLERY_MAT, "gallery_set", "gallery_ids")
    p_names, p_ids = read_mat_list(lists / PROBE_MAT, "probe_set", "probe_ids")
    return TinyFaceSet(
        probe_paths=_listed_images(lists / PROBE_MAT, "probe_set", images / PROBE_DIR, p_names),
        probe_labels=p_ids,
        match_paths=_listed_images(lists / GALLERY_MAT, "gallery_set", images / GALLERY_DIR, g_names),
        match_labels=g_ids,
        distractor_paths=_distractors(images / DISTRACTOR_DIR),
    )
