"""Fine-tuning: start from a trained checkpoint or safetensors file, and freeze parts of the backbone.

``model.init_from`` loads the backbone strictly (same architecture, every tensor) and the classifier's parameters
too when the class count matches and ``model.init_classifier`` is true. The head's buffers (the cam-softmax ``c``
and SphereFace ``lambda`` schedules) are not copied: the new run's schedules start from their configured values.
Resuming a run is a different thing (``ckpt_path=``), which restores everything including the optimizer.

Freezing (``model.freeze_backbone``, ``model.trainable_stages``) sets ``requires_grad=False``; the optimizers skip
parameters without gradients, so frozen weights stay bit-identical. With ``model.freeze_bn_stats`` the BatchNorm
layers of the frozen part also keep their running statistics (evaluated in eval mode even while training), which is
what a small fine-tuning set needs: its batches would otherwise drag the statistics away from the frozen weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facetrain.utils.safe_load import safe_load

__all__ = ["INIT_RECORD_FILE", "apply_finetuning", "freeze_backbone_parts", "load_initial_weights", "read_weights"]

INIT_RECORD_FILE = "init_from.json"  # in the run directory: what was loaded from where, what was frozen


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], str]:
    """The module state dict of a facetrain checkpoint (loaded weights-only) or a ``.safetensors`` export.

    Raises:
        FileNotFoundError: No file.
        ValueError: Not a facetrain checkpoint / safetensors file (named), or unsafe pickled content.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from={str(path)!r} is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), "safetensors"
        except (SafetensorError, OSError) as error:
            raise ValueError(f"model.init_from={str(path)!r} is not a readable safetensors file: {error}") from None
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"model.init_from={str(path)!r} has no state_dict: not a facetrain checkpoint")
    return ckpt["state_dict"], "checkpoint"


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def load_initial_weights(
    backbone: nn.Module, head: nn.Module, path: str | os.PathLike[str], init_classifier: bool = True
) -> dict[str, Any]:
    """Copy the backbone (strictly) and, when shapes match, the head's parameters from ``path``.

    Returns:
        What was loaded, for ``init_from.json``.

    Raises:
        ValueError: The file has no backbone weights or they do not fit this backbone (the message says which).
    """
    state, kind = read_weights(path)
    source = _prefixed(state, "backbone.")
    if not source:
        raise ValueError(f"model.init_from={str(path)!r} holds no backbone.* weights")
    try:
        backbone.load_state_dict(source, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"model.init_from={str(path)!r} does not fit backbone {getattr(backbone, 'model_name', '')!r} "
            f"(a different architecture, input size or embedding size?): {str(error).splitlines()[0]}"
        ) from None
    record: dict[str, Any] = {
        "init_from": str(Path(path).resolve()),
        "format": kind,
        "backbone": {"tensors": len(source), "loaded": True},
    }
    wanted = dict(head.named_parameters())
    available = _prefixed(state, "head.")
    mismatch = [k for k, p in wanted.items() if k not in available or available[k].shape != p.shape]
    if not init_classifier:
        record["classifier"] = {"loaded": False, "reason": "model.init_classifier=false"}
    elif mismatch:
        shapes = {k: list(available[k].shape) if k in available else None for k in mismatch}
        record["classifier"] = {
            "loaded": False,
            "reason": f"shapes differ (class count?): source {shapes}, this run "
            f"{ {k: list(wanted[k].shape) for k in mismatch} }",
        }
    else:
        with torch.no_grad():
            for k, p in wanted.items():
                p.copy_(available[k])
        record["classifier"] = {"loaded": True, "tensors": len(wanted)}
    return record


def _keep_eval(module: nn.Module, _: Any) -> None:
    # Runs before every forward: Lightning's model.train() cannot switch a frozen BatchNorm back to batch statistics.
    module.training = False


def stage_names(trunk: nn.Module) -> list[str]:
    """Module names of the trunk's stages, shallow to deep (timm's ``feature_info``)."""
    info = getattr(trunk, "feature_info", None) or []
    return [str(entry["module"]) for entry in info if entry.get("module")]


def freeze_backbone_parts(
    backbone: nn.Module, freeze_backbone: bool, trainable_stages: int | None, freeze_bn_stats: bool
) -> dict[str, Any] | None:
    """Freeze the whole backbone, or all of its trunk but the last ``trainable_stages`` stages (the neck trains).

    Returns:
        What was frozen, or None when nothing is.
    """
    if not freeze_backbone and trainable_stages is None:
        return None
    if freeze_backbone:
        frozen, kept = [backbone], []
    else:
        trunk = getattr(backbone, "trunk", backbone)
        stages = stage_names(trunk)
        if isinstance(trainable_stages, bool) or not 0 <= int(trainable_stages) <= len(stages):
            raise ValueError(
                f"model.trainable_stages must be an integer in [0, {len(stages)}] (the stages of "
                f"{getattr(backbone, 'model_name', 'this backbone')}: {stages}), got {trainable_stages!r}"
            )
        kept = stages[len(stages) - int(trainable_stages) :]
        frozen = [trunk]
    for module in frozen:
        module.requires_grad_(False)
    trunk = getattr(backbone, "trunk", backbone)
    for name in kept:
        trunk.get_submodule(name).requires_grad_(True)
    bn_frozen = 0
    if freeze_bn_stats:
        for module in backbone.modules():
            params = list(module.parameters(recurse=False))
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and params and not params[0].requires_grad:
                module.register_forward_pre_hook(_keep_eval)
                bn_frozen += 1
    n_frozen = sum(p.numel() for p in backbone.parameters() if not p.requires_grad)
    return {
        "freeze_backbone": bool(freeze_backbone),
        "trainable_stages": kept if not freeze_backbone else [],
        "frozen_parameters": n_frozen,
        "trainable_backbone_parameters": sum(p.numel() for p in backbone.parameters() if p.requires_grad),
        "frozen_batchnorm_layers": bn_frozen,
    }


def apply_finetuning(
    backbone: nn.Module,
    head: nn.Module,
    init_from: str | None,
    init_classifier: bool,
    freeze_backbone: bool,
    trainable_stages: int | None,
    freeze_bn_stats: bool,
) -> dict[str, Any] | None:
    """Load ``init_from`` (if given), then freeze; returns the record for ``init_from.json`` (None if neither)."""
    record: dict[str, Any] = {}
    if init_from:
        record.update(load_initial_weights(backbone, head, init_from, init_classifier))
    frozen = freeze_backbone_parts(backbone, freeze_backbone, trainable_stages, freeze_bn_stats)
    if frozen:
        record["frozen"] = frozen
    return record or None
