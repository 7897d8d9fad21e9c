"""The inference network (normalise → backbone → flip fusion → L2 norm) and rebuilding it from a checkpoint.

Nothing here imports Lightning, Hydra or OmegaConf: a deployed service loads a checkpoint with torch and timm only.
The backbone is rebuilt from the ``_target_`` node stored in the checkpoint (a flat call of a class named by its
import path, which is all a backbone node holds), with ``pretrained`` switched off: the weights come from the
checkpoint, and neither a hub nor a local pretrained file needs to be reachable.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.evaluation.embed import fuse_flip
from facetrain.inference.contract import CONTRACT_KEY, Contract, ContractError, contract_from_config
from facetrain.utils.safe_load import CONFIG_KEY, safe_load  # CONFIG_KEY re-exported: the inference API

log = logging.getLogger(__name__)

__all__ = ["CONFIG_KEY", "InferenceModel", "NotAFacetrainModelError", "build_backbone", "load_checkpoint"]

_HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


class NotAFacetrainModelError(ValueError):
    """A model file that is neither a facetrain checkpoint nor a facetrain export."""


def _call_target(node: Any) -> Any:
    """Build a ``_target_`` node (recursively) by importing its class: enough for backbone nodes, without Hydra."""
    if isinstance(node, Mapping):
        kwargs = {k: _call_target(v) for k, v in node.items() if k not in _HYDRA_KEYS}
        if "_target_" not in node:
            return kwargs
        module_name, _, attr = str(node["_target_"]).rpartition(".")
        return getattr(importlib.import_module(module_name), attr)(**kwargs)
    if isinstance(node, list):
        return [_call_target(v) for v in node]
    return node


def build_backbone(backbone_cfg: Mapping[str, Any]) -> nn.Module:
    """The backbone of a stored ``model.backbone`` node, randomly initialised and with pretrained loading off."""
    node = dict(backbone_cfg)
    if "pretrained" in node:
        node["pretrained"] = False
    node.pop("pretrained_file", None)  # the file may not exist where the model is deployed; weights come after
    return _call_target(node)


def backbone_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``backbone.*`` entries of a module state dict, with the prefix removed."""
    return {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, Contract, dict[str, Any]]:
    """Rebuild the backbone of a train-task checkpoint (loaded weights-only) and its preprocessing contract.

    A checkpoint written before contracts were stored gets its contract rebuilt from the stored config, with a
    warning that the verification thresholds are unknown.

    Returns:
        ``(backbone in eval mode on CPU, contract, checkpoint dict)``.

    Raises:
        NotAFacetrainModelError: The file loads but is not a facetrain checkpoint, or is not a torch file at all.
        UnsafeCheckpointError: The file holds pickled code (never loaded).
    """
    path = Path(path)
    try:
        ckpt = safe_load(path)
    except ValueError as error:
        if type(error) is not ValueError:  # UnsafeCheckpointError: keep its own message
            raise
        raise NotAFacetrainModelError(_not_a_model(path, str(error))) from None
    run_config = ckpt.get(CONFIG_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(run_config, dict) or "model" not in run_config or "state_dict" not in ckpt:
        raise NotAFacetrainModelError(_not_a_model(path, f"it holds no {CONFIG_KEY!r} run config and state_dict"))
    if CONTRACT_KEY in ckpt:
        contract = Contract.from_dict(ckpt[CONTRACT_KEY], source=str(path))
    else:
        log.warning(
            "%s predates the stored preprocessing contract: rebuilt from its run config; verification thresholds "
            "are unknown (pass threshold=..., or export it to measure them)",
            path,
        )
        contract = contract_from_config(run_config)
    backbone = build_backbone(run_config["model"]["backbone"])
    state = backbone_state(ckpt["state_dict"])
    if not state:
        raise ContractError(f"{path} has no backbone.* weights in its state_dict")
    backbone.load_state_dict(state, strict=True)
    return backbone.eval(), contract, ckpt


def _not_a_model(path: Path, why: str) -> str:
    return (
        f"{path} is neither a facetrain checkpoint (a .ckpt written by train.py) nor a facetrain export (a directory "
        f"with facetrain.json and model.onnx / model.pt): {why}"
    )


class InferenceModel(nn.Module):
    """Pixels in, final embeddings out: what evaluation computes, as one module that can be exported.

    Args:
        backbone: Maps normalised ``(B, 3, H, W)`` images to raw embeddings.
        contract: Supplies mean/std and the flip fusion.
        normalize_input: Take float pixels in ``[0, max_pixel_value]`` and normalise inside; else take normalised
            input.
    """

    def __init__(self, backbone: nn.Module, contract: Contract, normalize_input: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.flip = contract.flip
        self.normalize_input = normalize_input
        scale, shift = contract.affine()  # (x / max - mean) / std as one multiply-add
        self.register_buffer("scale", torch.from_numpy(scale), persistent=False)
        self.register_buffer("shift", torch.from_numpy(shift), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float images → ``(B, D)`` L2-normalised (flip-fused) embeddings."""
        x = images * self.scale - self.shift if self.normalize_input else images
        if self.flip == "none":
            return F.normalize(self.backbone(x), dim=1)
        # One backbone call on original + mirrored halves; BatchNorm in eval mode treats samples independently.
        emb, flipped = self.backbone(torch.cat([x, torch.flip(x, dims=[3])])).chunk(2)
        return fuse_flip(emb, flipped, self.flip)
