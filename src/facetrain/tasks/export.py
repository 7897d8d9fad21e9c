"""The export task: a checkpoint to ONNX / TorchScript / safetensors plus ``facetrain.json``, parity-checked."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from facetrain.evaluation.embed import DecodedImages
from facetrain.inference.callback import image_verification_sets
from facetrain.inference.export import export_checkpoint
from facetrain.utils.instantiate import instantiate_named
from facetrain.utils.io import ensure_writable_dir

log = logging.getLogger(__name__)

__all__ = ["export", "parity_faces"]


def parity_faces(eval_cfg: DictConfig | None, count: int) -> tuple[np.ndarray, str]:
    """The first ``count`` decoded images of the first configured image-verification set, as uint8 RGB.

    Raises:
        ValueError: No image-verification set is configured, or ``count`` < 1.
    """
    if count < 1:
        raise ValueError(f"parity_images must be >= 1, got {count}")
    sets = image_verification_sets(instantiate_named(eval_cfg))
    if not sets:
        raise ValueError("export needs an image evaluation set for the parity faces, e.g. eval=[lfw]")
    evaluator = sets[0]
    images = evaluator.images()
    if not isinstance(images, DecodedImages):
        images = DecodedImages.from_paths(images, None)
    n = min(count, len(images))
    return np.stack([images.decode(i) for i in range(n)]), f"eval set {evaluator.name} ({n} images)"


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` as ``cfg.format`` to ``cfg.out`` (``configs/export.yaml`` composed by Hydra).

    Returns:
        The written contract (``facetrain.json``) as a dict.
    """
    ckpt_path = Path(str(cfg.ckpt_path))
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r} is not a file")
    out = ensure_writable_dir(cfg.out, "out")
    faces, source = parity_faces(cfg.get("eval"), int(cfg.parity_images))
    contract = export_checkpoint(
        ckpt_path,
        out,
        str(cfg.format),
        faces,
        source,
        opset=int(cfg.opset),
        normalize_in_graph=bool(cfg.normalize_in_graph),
        atol=float(cfg.parity_atol),
    )
    log.info("export written to %s; parity %s", out, contract.export.get("parity"))
    return contract.to_dict()
