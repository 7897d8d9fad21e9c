"""Console scripts: ``facetrain-embed``, ``facetrain-verify`` and ``facetrain-export`` (see pyproject.toml).

``facetrain-embed`` and ``facetrain-verify`` use :class:`~facetrain.inference.embedder.FaceEmbedder` only (no
Lightning, no Hydra). ``facetrain-export`` is ``python export.py`` (the Hydra app of ``configs/export.yaml``).
Errors a user can fix (bad image, bad model file, bad threshold) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facetrain.data.align import LandmarkRow, parse_landmarks
from facetrain.inference.contract import ContractError
from facetrain.inference.embedder import FaceEmbedder
from facetrain.inference.inputs import BadInputError, check_image, check_threshold, list_images, load
from facetrain.inference.model import NotAFacetrainModelError
from facetrain.utils.safe_load import UnsafeCheckpointError

USER_ERRORS = (BadInputError, NotAFacetrainModelError, ContractError, UnsafeCheckpointError, OSError, ValueError)


def _fail(error: BaseException) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def _threshold(text: str) -> float:
    try:
        return check_threshold(float(text))
    except (ValueError, BadInputError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _landmark_table(path: str, root: Path | None) -> dict[str, np.ndarray]:
    """Landmarks by absolute image path (``data.align`` CSV or InsightFace .lst); a bad row is an error naming it."""
    table: dict[str, np.ndarray] = {}
    base = Path(path).parent if root is None else root
    for row in parse_landmarks(path):
        if not isinstance(row, LandmarkRow):
            raise BadInputError(f"{path} line {row.lineno} ({row.path}): {row.reason}")
        table[os.path.abspath(row.path if os.path.isabs(row.path) else base / row.path)] = row.landmarks
    return table


def embed_files(
    model: FaceEmbedder,
    paths: list[str],
    landmarks: dict[str, np.ndarray] | None,
    skip_bad: bool,
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Embed image files in batches; returns ``(embeddings, embedded paths, [(bad path, reason)])``.

    A corrupt or unusable file stops the run with its name, or with ``skip_bad`` is listed and left out.
    """
    from tqdm import tqdm

    kept: list[str] = []
    bad: list[tuple[str, str]] = []
    parts: list[np.ndarray] = []
    bar = tqdm(total=len(paths), unit="img", disable=not progress, desc="embedding")
    for start in range(0, len(paths), batch_size):
        crops, names = [], []
        for path in paths[start : start + batch_size]:
            try:
                image = load(path)
                if landmarks is not None:
                    points = landmarks.get(os.path.abspath(path))
                    if points is None:
                        raise BadInputError(f"image {path} has no entry in the landmarks file")
                    image = model.align(image, points)
                crops.append(check_image(image, path, model.input_size))
                names.append(path)
            except (OSError, BadInputError) as error:
                if not skip_bad:
                    raise
                bad.append((path, str(error)))
        if crops:
            parts.append(model.embed(np.stack(crops), batch_size=batch_size))
            kept.extend(names)
        bar.update(min(batch_size, len(paths) - start))
    bar.close()
    width = model.contract.embedding_size
    return (np.concatenate(parts) if parts else np.zeros((0, width), np.float32)), kept, bad


def embed_main(argv: Sequence[str] | None = None) -> int:
    """``facetrain-embed <dir or list file> --model <ckpt or export> --out embeddings.npy``."""
    parser = argparse.ArgumentParser(
        prog="facetrain-embed",
        description="Embed aligned face images (a directory, searched recursively, or a list file with one path a "
        "line). Writes the (N, D) float32 L2-normalised embeddings as .npy and the image order as CSV.",
    )
    parser.add_argument("images", help="directory of images or list file")
    parser.add_argument("--model", required=True, help="checkpoint (.ckpt) or export (directory, .onnx, .pt)")
    parser.add_argument("--out", required=True, help="embeddings .npy (the order goes to <out>.csv beside it)")
    parser.add_argument("--landmarks", help="CSV path,x1,y1,...,x5,y5 or InsightFace .lst for unaligned images")
    parser.add_argument("--skip-bad", action="store_true", help="list and skip unreadable images instead of stopping")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="for checkpoints: cpu, cuda, auto")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        paths = list_images(args.images)  # before the model loads: a wrong path costs nothing
        root = Path(args.images) if Path(args.images).is_dir() else None
        landmarks = _landmark_table(args.landmarks, root) if args.landmarks else None
        model = FaceEmbedder.load(args.model, device=args.device)
        emb, kept, bad = embed_files(model, paths, landmarks, args.skip_bad, args.batch_size, not args.no_progress)
    except USER_ERRORS as error:
        return _fail(error)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "path"])
        writer.writerows(enumerate(kept))
    for _, reason in bad:
        print(f"skipped: {reason}", file=sys.stderr)
    print(f"{len(kept)} embeddings ({emb.shape[1]}-d) -> {out}, order -> {out.with_suffix('.csv')}; {len(bad)} skipped")
    return 0


def verify_main(argv: Sequence[str] | None = None) -> int:
    """``facetrain-verify a.jpg b.jpg --model ...``: prints score, threshold and decision."""
    parser = argparse.ArgumentParser(prog="facetrain-verify", description="Are two aligned face images one person?")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--model", required=True, help="checkpoint (.ckpt) or export (directory, .onnx, .pt)")
    parser.add_argument("--threshold", type=_threshold, help="cosine threshold in [-1, 1] (default: the model's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        model = FaceEmbedder.load(args.model, device=args.device)
        score, same = model.verify(args.a, args.b, threshold=args.threshold)
    except USER_ERRORS as error:
        return _fail(error)
    threshold = args.threshold if args.threshold is not None else model.threshold
    where = "given" if args.threshold is not None else f"stored, from {model.contract.thresholds.get('eval_set')}"
    print(f"score {score:.4f}  threshold {threshold:.4f} ({where})  {'same' if same else 'different'}")
    return 0


def export_main() -> None:
    """``facetrain-export ckpt_path=... format=onnx``: the Hydra app of ``export.py`` (repository configs)."""
    import hydra

    from facetrain.tasks.export import export

    configs = Path(__file__).resolve().parents[3] / "configs"
    if not (configs / "export.yaml").is_file():
        raise SystemExit(f"facetrain-export needs the repository's configs/ (not found at {configs}); run export.py")
    hydra.main(version_base="1.3", config_path=str(configs), config_name="export")(export)()
