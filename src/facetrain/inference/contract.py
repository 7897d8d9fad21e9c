"""The preprocessing contract: everything a deployment must reproduce to get the embeddings the model was measured on.

A face model is only as good as the pipeline in front of it: the same crop (alignment template and its five-landmark
order), the same colour order and normalisation, the same test-time flip fusion, and a threshold measured on a known
evaluation set. The contract carries these as plain data (JSON-ready), in every checkpoint (``facetrain_contract``,
written by :class:`facetrain.inference.callback.ContractCallback`) and next to every export (``facetrain.json``).

Checkpoints written before the contract existed still hold their resolved run config (``facetrain_config``); the
contract is rebuilt from it (:func:`contract_from_config`), only the measured thresholds are then unknown.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facetrain.data.align import TEMPLATES
from facetrain.evaluation.embed import flip_mode
from facetrain.evaluation.verification import UndefinedMetricError, threshold_at_far
from facetrain.utils.io import write_json_atomic

__all__ = [
    "CONTRACT_FILE",
    "CONTRACT_KEY",
    "Contract",
    "ContractError",
    "contract_from_config",
    "verification_thresholds",
]

CONTRACT_KEY = "facetrain_contract"  # key in a checkpoint
CONTRACT_FILE = "facetrain.json"  # file next to an export
FORMAT_VERSION = 1
DEFAULT_FAR = 1e-3
LANDMARK_ORDER = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
CONVENTIONS = {"112x112": "ArcFace (InsightFace arcface_src)", "112x96": "SphereFace / CosFace"}


class ContractError(ValueError):
    """A contract that is missing, malformed or cannot be built; the message says which field and why."""


@dataclass(frozen=True)
class Contract:
    """What a face crop must look like going in, and what the embedding means coming out.

    Attributes:
        input_size: ``(height, width)`` of the aligned crop.
        mean: Per-channel mean of ``pixel / max_pixel_value`` (albumentations ``Normalize``), in ``channel_order``.
        std: Per-channel std, as ``mean``.
        embedding_size: Width of the output embedding (twice the backbone's with ``flip=concat``).
        channel_order: ``RGB``: what the model was trained on (facetrain decodes every image to RGB).
        max_pixel_value: Pixel scale (255 for uint8).
        template: Alignment template name (:data:`facetrain.data.align.TEMPLATES`), None when the input size has no
            standard template (images must then come aligned).
        flip: Test-time flip fusion: ``none``, ``sum`` or ``concat`` (:func:`facetrain.evaluation.embed.fuse_flip`).
        l2_normalized: Whether the embeddings handed out are unit vectors (always true for ``FaceEmbedder``).
        thresholds: Recommended cosine thresholds and where they were measured (:func:`verification_thresholds`).
        model: Provenance (backbone, head, checkpoint, step).
        export: Export details (format, file, opset, input/output names, parity), empty for a checkpoint.
    """

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embedding_size: int
    channel_order: str = "RGB"
    max_pixel_value: float = 255.0
    template: str | None = None
    flip: str = "none"
    l2_normalized: bool = True
    thresholds: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.input_size)
        if len(size) != 2 or min(size) < 1:
            raise ContractError(f"contract input.size must be [height, width] of positive ints, got {self.input_size}")
        object.__setattr__(self, "input_size", size)
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ContractError(f"contract input.{name} must be 3 finite numbers, got {getattr(self, name)}")
            object.__setattr__(self, name, values)
        if min(self.std) <= 0:
            raise ContractError(f"contract input.std must be positive, got {self.std}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ContractError(f"contract input.channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.template is not None and self.template not in TEMPLATES:
            raise ContractError(f"contract alignment.template must be one of {sorted(TEMPLATES)} or null")
        try:
            object.__setattr__(self, "flip", flip_mode(self.flip))
        except ValueError as error:
            raise ContractError(f"contract {error}") from None

    def replace(self, **changes: Any) -> Contract:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, shift)``, each ``(1, 3, 1, 1)`` float32, with ``normalised = pixels * scale - shift``.

        The same map as albumentations' ``Normalize``: ``(pixel / max_pixel_value - mean) / std``.
        """
        std = np.asarray(self.std, dtype=np.float64)
        scale = 1.0 / (std * self.max_pixel_value)
        shift = np.asarray(self.mean, dtype=np.float64) / std
        return scale.astype(np.float32).reshape(1, 3, 1, 1), shift.astype(np.float32).reshape(1, 3, 1, 1)

    def threshold(self, kind: str = "accuracy") -> float | None:
        """The stored cosine threshold: ``accuracy`` (accuracy-optimal) or ``far`` (at the stored FAR), or None."""
        key = {"accuracy": "accuracy_optimal", "far": "at_far"}.get(kind)
        if key is None:
            raise ValueError(f"threshold kind must be 'accuracy' or 'far', got {kind!r}")
        value = self.thresholds.get(key)
        return None if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of ``facetrain.json`` (also stored in checkpoints)."""
        points = TEMPLATES[self.template][0].round(4).tolist() if self.template else None
        return {
            "format_version": FORMAT_VERSION,
            "input": {
                "size": list(self.input_size),
                "channel_order": self.channel_order,
                "layout": "aligned face, HxWx3 uint8 (API); NCHW float32 after normalisation (model input)",
                "max_pixel_value": self.max_pixel_value,
                "mean": list(self.mean),
                "std": list(self.std),
            },
            "alignment": {
                "template": self.template,
                "convention": CONVENTIONS.get(self.template or "", "none: images must already be aligned crops"),
                "landmark_order": list(LANDMARK_ORDER),
                "points_xy": points,
            },
            "flip": self.flip,
            "embedding": {"size": self.embedding_size, "l2_normalized": self.l2_normalized},
            "thresholds": dict(self.thresholds),
            "model": dict(self.model),
            "export": dict(self.export),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "contract") -> Contract:
        """Inverse of :meth:`to_dict`.

        Raises:
            ContractError: A required field is missing or invalid; the message names ``source`` and the field.
        """
        try:
            if int(data["format_version"]) > FORMAT_VERSION:
                raise ContractError(
                    f"{source}: contract format {data['format_version']} is newer than this facetrain understands "
                    f"({FORMAT_VERSION}); upgrade facetrain"
                )
            inp = data["input"]
            return cls(
                input_size=tuple(inp["size"]),
                mean=tuple(inp["mean"]),
                std=tuple(inp["std"]),
                channel_order=inp.get("channel_order", "RGB"),
                max_pixel_value=float(inp.get("max_pixel_value", 255.0)),
                embedding_size=int(data["embedding"]["size"]),
                l2_normalized=bool(data["embedding"].get("l2_normalized", True)),
                template=data.get("alignment", {}).get("template"),
                flip=data.get("flip", "none"),
                thresholds=dict(data.get("thresholds") or {}),
                model=dict(data.get("model") or {}),
                export=dict(data.get("export") or {}),
            )
        except (KeyError, TypeError) as error:
            raise ContractError(f"{source}: malformed preprocessing contract (missing or bad field {error})") from None
        except ContractError as error:
            raise ContractError(f"{source}: {error}") from None

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``<directory>/facetrain.json`` atomically."""
        return write_json_atomic(Path(directory) / CONTRACT_FILE, self.to_dict())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Contract:
        """Read a ``facetrain.json``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ContractError(f"cannot read the preprocessing contract {path}: {error}") from None
        return cls.from_dict(data, source=str(path))


# ---------------------------------------------------------------------------------------------------------------
# Building a contract from a run
# ---------------------------------------------------------------------------------------------------------------


def _normalize_step(transform: Any) -> tuple[tuple[float, ...], tuple[float, ...], float] | None:
    """``(mean, std, max_pixel_value)`` of the albumentations ``Normalize`` in a resolved transform node."""
    steps = transform.get("transforms", []) if isinstance(transform, Mapping) else []
    for step in steps:
        if isinstance(step, Mapping) and str(step.get("_target_", "")).endswith(".Normalize"):
            mean = step.get("mean", (0.485, 0.456, 0.406))  # albumentations' defaults (ImageNet)
            std = step.get("std", (0.229, 0.224, 0.225))
            return tuple(mean), tuple(std), float(step.get("max_pixel_value", 255.0))
    return None


def _pick_eval_set(eval_cfg: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """The evaluation set whose preprocessing is the contract's: ``lfw`` if configured, else the first image set."""
    nodes = {k: v for k, v in (eval_cfg or {}).items() if isinstance(v, Mapping)}
    if "lfw" in nodes:
        return "lfw", nodes["lfw"]
    return next(iter(nodes.items()), None)


def contract_from_config(run_config: Mapping[str, Any], thresholds: Mapping[str, Any] | None = None) -> Contract:
    """Build the contract from a checkpoint's resolved run config (``facetrain_config``).

    Normalisation and flip fusion come from the evaluation set the thresholds belong to (``lfw`` when configured),
    falling back to ``data.eval_transform``: that is the preprocessing the reported accuracy was measured with.

    Args:
        run_config: The resolved config (plain data).
        thresholds: :func:`verification_thresholds` of the evaluation that produced the checkpoint, if known.

    Raises:
        ContractError: The config lacks the backbone node.
    """
    from facetrain.models.backbone import input_hw  # timm import: only needed when rebuilding from a config

    try:
        backbone = run_config["model"]["backbone"]
        size = input_hw(backbone.get("input_size", 112))
        embedding_size = int(backbone["embedding_size"])
    except (KeyError, TypeError) as error:
        raise ContractError(f"the stored run config has no model.backbone node with {error}") from None
    picked = _pick_eval_set(run_config.get("eval") or {})
    eval_node = picked[1] if picked else {}
    norm = _normalize_step(eval_node.get("transform")) or _normalize_step(
        run_config.get("data", {}).get("eval_transform")
    )
    # No Normalize step: to_tensor hands the model raw 0-255 floats, i.e. mean 0 and std 1/255 of pixel/255.
    mean, std, max_pixel = norm or ((0.0, 0.0, 0.0), (1 / 255,) * 3, 255.0)
    flip = flip_mode(eval_node.get("flip", "none"))
    template = next((name for name, (_, hw) in TEMPLATES.items() if tuple(hw) == size), None)
    model = {
        "backbone": backbone.get("model_name"),
        "head": (run_config["model"].get("head") or {}).get("_target_"),
        "backbone_config": {k: v for k, v in backbone.items() if k not in ("pretrained", "pretrained_file")},
    }
    return Contract(
        input_size=size,
        mean=mean,
        std=std,
        max_pixel_value=max_pixel,
        embedding_size=embedding_size * (2 if flip == "concat" else 1),
        template=template,
        flip=flip,
        thresholds=dict(thresholds) if thresholds else {"reason": "not measured (no evaluation result was stored)"},
        model=model,
    )


def verification_thresholds(
    name: str,
    score: str,
    mean_subtraction: bool,
    accuracy: float | None,
    threshold: float | None,
    fpr: Sequence[float] | np.ndarray,
    roc_thresholds: Sequence[float] | np.ndarray,
    n_impostors: int,
    far: float = DEFAULT_FAR,
) -> dict[str, Any]:
    """Deployable cosine thresholds from one pair-verification evaluation.

    ``accuracy_optimal`` is the mean of the 10 fold thresholds (what the reported accuracy used); ``at_far`` is the
    most accepting ROC threshold with FAR <= ``far`` (undefined, with a reason, when the set has fewer than
    ``1 / far`` impostor pairs). Squared-L2 thresholds of unit vectors become cosines (``cos = 1 - d / 2``).
    Mean-subtracted scores are not plain cosines of single embeddings, so no threshold is recommended for them.
    """
    out: dict[str, Any] = {"eval_set": name, "score": "cosine", "far": far, "accuracy": accuracy}
    if mean_subtraction:
        out["reason"] = f"eval.{name}.mean_subtraction=true: its thresholds apply to mean-subtracted scores only"
        out.update(accuracy_optimal=None, at_far=None)
        return out

    def as_cosine(t: float) -> float:
        return float(t) if score == "cosine" else 1.0 - float(t) / 2.0

    out["accuracy_optimal"] = None if threshold is None else as_cosine(threshold)
    try:
        at_far = threshold_at_far(np.asarray(fpr), np.asarray(roc_thresholds), far, n_impostors)
    except UndefinedMetricError as error:
        out.update(at_far=None, at_far_reason=str(error))
        return out
    if not math.isfinite(at_far):  # tied top impostor scores: no finite cut reaches the FAR
        out.update(at_far=None, at_far_reason=f"no finite threshold of eval set {name} has FAR <= {far:g}")
    else:
        out["at_far"] = as_cosine(at_far)
    return out
