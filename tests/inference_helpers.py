"""Small facetrain-format checkpoints for the inference tests, without a training run.

A checkpoint here is what ``train.py`` writes, minus the optimizer state: ``state_dict`` (``backbone.*`` and
``head.*``), the resolved run config under ``facetrain_config`` and, unless ``with_contract=False`` (an "older"
checkpoint), the contract under ``facetrain_contract``. BatchNorm running statistics are randomised, so that an
export that mishandled them (or train-mode BatchNorm) would show in the parity check.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facetrain.inference.contract import CONTRACT_KEY, contract_from_config
from facetrain.inference.model import CONFIG_KEY, build_backbone

NORMALIZE = {"_target_": "albumentations.Normalize", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def run_config(
    model_name: str = "resnet18",
    input_size: int | list[int] = 32,
    embedding_size: int = 16,
    flip: str = "none",
    target: str = "facetrain.models.backbone.FaceBackbone",
) -> dict[str, Any]:
    """A resolved run config with the keys the inference code reads."""
    backbone = {
        "_target_": target,
        "model_name": model_name,
        "embedding_size": embedding_size,
        "pretrained": False,
        "pretrained_file": None,
        "dropout": 0.0,
        "input_size": input_size,
    }
    transform = {"_target_": "albumentations.Compose", "transforms": [copy.deepcopy(NORMALIZE)]}  # callers edit it
    return {
        "model": {"backbone": backbone, "head": {"_target_": "facetrain.losses.ArcFaceHead"}},
        "data": {"eval_transform": copy.deepcopy(transform)},
        "eval": {"lfw": {"flip": flip, "score": "cosine", "transform": transform}},
    }


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics (fresh ones are mean 0 / var 1, which hides eval-mode mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def make_checkpoint(
    path: Path,
    config: dict[str, Any] | None = None,
    num_classes: int = 5,
    with_contract: bool = True,
    thresholds: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write a checkpoint of a randomly initialised backbone; returns its path and state dict."""
    config = config or run_config()
    torch.manual_seed(seed)
    backbone = build_backbone(config["model"]["backbone"])
    randomize_batchnorm(backbone, seed)
    state = {f"backbone.{k}": v.clone() for k, v in backbone.state_dict().items()}
    state["head.weight"] = torch.randn(num_classes, int(config["model"]["backbone"]["embedding_size"]))
    ckpt: dict[str, Any] = {"state_dict": state, CONFIG_KEY: config, "epoch": 0, "global_step": 3}
    if with_contract:
        thresholds = thresholds or {"eval_set": "lfw", "score": "cosine", "accuracy_optimal": 0.3, "at_far": 0.5}
        ckpt[CONTRACT_KEY] = contract_from_config(config, thresholds).to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path, state


def faces(n: int, size: int | tuple[int, int] = 32, seed: int = 0) -> np.ndarray:
    """``(n, H, W, 3)`` uint8 images (smooth gradients plus noise, a stand-in for faces in numeric checks)."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([yy, xx, (yy + xx) / 2], axis=-1)[None] * 200
    return np.clip(base + rng.normal(0, 25, (n, h, w, 3)), 0, 255).astype(np.uint8)


class SvdBackbone(nn.Module):
    """A backbone using an operator the ONNX exporter cannot convert (``aten::linalg_svd``)."""

    def __init__(self, embedding_size: int = 4, **_: Any) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.proj = nn.Linear(2, embedding_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        singular = torch.linalg.svdvals(images[:, 0, :2, :2])
        return self.proj(singular)
