"""``FaceEmbedder``: a trained facetrain model as a plain Python object (no Lightning, no Hydra).

    from facetrain import FaceEmbedder
    model = FaceEmbedder.load("logs/export/runs/<time>")        # or .from_checkpoint("last.ckpt")
    emb = model.embed("aligned_faces/")                          # (N, D) float32, unit rows
    score, same = model.verify("a.jpg", "b.jpg")

The preprocessing (crop size, RGB, mean/std, flip fusion) comes from the model's
:class:`~facetrain.inference.contract.Contract`; callers hand in aligned crops or images plus five landmarks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facetrain.data.align import align_face
from facetrain.inference.backends import (
    Runtime,
    export_file_and_contract,
    onnx_runtime,
    safetensors_runtime,
    torch_runtime,
    torchscript_runtime,
)
from facetrain.inference.contract import Contract
from facetrain.inference.inputs import (
    BadInputError,
    ImageLike,
    check_image,
    check_landmarks,
    check_threshold,
    expand_images,
    load,
)
from facetrain.inference.model import InferenceModel, NotAFacetrainModelError, load_checkpoint

__all__ = ["BadInputError", "FaceEmbedder", "NotAFacetrainModelError"]


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FaceEmbedder:
    """Embeds aligned faces with a trained model and verifies pairs with its measured threshold.

    Build with :meth:`from_checkpoint`, :meth:`from_export` or :meth:`load` (either).

    Args:
        runtime: ``(N, 3, H, W)`` float32 pixels → ``(N, D)`` unit embeddings.
        contract: The model's preprocessing contract.
        source: What was loaded (for messages).
    """

    def __init__(self, runtime: Runtime, contract: Contract, source: str = "") -> None:
        self.runtime = runtime
        self.contract = contract
        self.source = source

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device | None = "cpu") -> FaceEmbedder:
        """The PyTorch model of a ``train.py`` checkpoint (loaded weights-only; ``device="auto"`` picks CUDA)."""
        backbone, contract, _ = load_checkpoint(path)
        return cls(torch_runtime(InferenceModel(backbone, contract), _resolve_device(device)), contract, str(path))

    @classmethod
    def from_export(
        cls, path: str | os.PathLike[str], device: str | torch.device | None = "cpu", threads: int | None = None
    ) -> FaceEmbedder:
        """An exported model: ``model.onnx`` (ONNX Runtime, CPU), ``model.pt`` (TorchScript) or ``model.safetensors``
        (PyTorch), given as the export directory or the file.

        Args:
            threads: ONNX Runtime intra-op threads (None: its default, all cores).
        """
        file, contract = export_file_and_contract(path)
        if file.suffix == ".onnx":
            return cls(onnx_runtime(file, contract, threads), contract, str(file))
        if file.suffix == ".pt":
            return cls(torchscript_runtime(file, contract), contract, str(file))
        runtime, contract = safetensors_runtime(file, _resolve_device(device))
        return cls(runtime, contract, str(file))

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device | None = "cpu") -> FaceEmbedder:
        """A checkpoint or an export, told apart by what the path holds.

        Raises:
            NotAFacetrainModelError: ``path`` is neither (the message says what was expected).
        """
        path = Path(path)
        if not path.exists():
            raise NotAFacetrainModelError(f"model {path} does not exist")
        if path.is_dir() or path.suffix in (".onnx", ".pt", ".safetensors"):
            return cls.from_export(path, device=device)
        return cls.from_checkpoint(path, device=device)

    # --- properties ---------------------------------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the aligned crops the model takes."""
        return self.contract.input_size

    @property
    def threshold(self) -> float | None:
        """The stored accuracy-optimal cosine threshold (None if the model has none)."""
        return self.contract.threshold("accuracy")

    # --- inference ----------------------------------------------------------------------------------------------
    def align(self, image: ImageLike, landmarks5: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Warp ``image`` (array or file) onto the contract's template from its 5 landmarks.

        Args:
            image: ``H×W×3`` uint8 (any channel order; it is kept) or an image file (decoded to RGB).
            landmarks5: ``(5, 2)`` pixel (x, y) of left eye, right eye, nose, left and right mouth corner.

        Returns:
            The aligned ``input_size`` crop.
        """
        name = image if isinstance(image, (str, os.PathLike)) else "array"
        array = check_image(load(image if not isinstance(image, os.PathLike) else str(image)), str(name), None)
        points = check_landmarks(landmarks5, str(name))
        if self.contract.template is None:
            raise BadInputError(
                f"the model's {self.input_size[0]}x{self.input_size[1]} input has no standard alignment template; "
                "pass crops that are already aligned"
            )
        try:
            return align_face(array, points, self.contract.template)
        except ValueError as error:
            raise BadInputError(f"cannot align {name}: {error}") from None

    def batches(
        self,
        images: ImageLike | Iterable[ImageLike],
        landmarks: Sequence[Any] | np.ndarray | None = None,
        batch_size: int = 64,
        bgr: bool = False,
    ) -> Iterator[np.ndarray]:
        """Yield ``(B, D)`` embeddings batch by batch (see :meth:`embed`)."""
        if batch_size < 1:
            raise BadInputError(f"batch_size must be >= 1, got {batch_size}")
        items = expand_images(images)
        if landmarks is not None and len(landmarks) != len(items):
            raise BadInputError(f"got {len(landmarks)} landmark sets for {len(items)} images")
        # Fast path: an (N, H, W, 3) uint8 array of aligned crops is checked once, not image by image.
        if isinstance(images, np.ndarray) and images.ndim == 4 and landmarks is None:
            if len(images):
                check_image(images[0], "0", self.input_size)
            for start in range(0, len(images), batch_size):
                yield self._run(images[start : start + batch_size], bgr)
            return
        for start in range(0, len(items), batch_size):
            crops = []
            for i in range(start, min(start + batch_size, len(items))):
                item = items[i]
                name = f"{i} ({item})" if isinstance(item, str) else str(i)
                image = check_image(load(item), name, None if landmarks is not None else self.input_size)
                if landmarks is not None:
                    image = self.align(image, check_landmarks(landmarks[i], name))
                crops.append(image)
            yield self._run(np.stack(crops), bgr)

    def embed(
        self,
        images: ImageLike | Iterable[ImageLike],
        landmarks: Sequence[Any] | np.ndarray | None = None,
        batch_size: int = 64,
        bgr: bool = False,
    ) -> np.ndarray:
        """L2-normalised embeddings, one row per image, in input order.

        Args:
            images: Aligned crops of the contract's size as ``H×W×3`` or ``N×H×W×3`` uint8 arrays in **RGB** order
                (``bgr=True`` for OpenCV's BGR), image files (decoded to RGB), a directory of images (recursive,
                sorted) or a list file (one path per line), or a list mixing these.
            landmarks: Optional ``(5, 2)`` landmarks per image (in input order) for images that are not aligned yet.
            batch_size: Images per forward pass.
            bgr: Arrays are in BGR order (files are always decoded to RGB).

        Returns:
            ``(N, D)`` float32 unit rows (``D = contract.embedding_size``).

        Raises:
            BadInputError: An image is not 3-channel uint8 or not the contract's size (without landmarks), or the
                landmarks have the wrong shape; the message names the image.
            OSError: An image file is missing or corrupt (named).
        """
        parts = list(self.batches(images, landmarks, batch_size, bgr))
        if not parts:
            return np.zeros((0, self.contract.embedding_size), dtype=np.float32)
        return np.concatenate(parts)

    def _run(self, crops: np.ndarray, bgr: bool) -> np.ndarray:
        if bgr:
            crops = crops[..., ::-1]
        # NCHW shape with NHWC memory (channels-last): one conversion pass, and oneDNN's convolutions run faster on
        # channels-last input than on contiguous NCHW on CPU (scripts/bench_inference.py measures both).
        pixels = crops.transpose(0, 3, 1, 2).astype(np.float32)
        return np.asarray(self.runtime(pixels), dtype=np.float32)

    def verify(
        self, a: ImageLike, b: ImageLike, threshold: float | None = None, landmarks: Sequence[Any] | None = None
    ) -> tuple[float, bool]:
        """Cosine score of two faces and whether it reaches the threshold (same person).

        Args:
            a: First face (aligned array or file).
            b: Second face.
            threshold: Cosine threshold in [-1, 1]; None uses the model's stored accuracy-optimal one.
            landmarks: Optional ``[landmarks_a, landmarks_b]`` for unaligned images.

        Raises:
            BadInputError: A threshold outside [-1, 1], or none given and none stored.
        """
        if threshold is None:
            threshold = self.threshold
            if threshold is None:
                reason = self.contract.thresholds.get("reason", "none was measured")
                raise BadInputError(f"{self.source} stores no verification threshold ({reason}); pass threshold=...")
        threshold = check_threshold(threshold)
        emb = self.embed([a, b], landmarks=landmarks)
        score = float(np.clip(emb[0] @ emb[1], -1.0, 1.0))
        return score, score >= threshold
