"""The evaluation task: rebuild a trained network from its checkpoint, run the eval callbacks, write metrics.json."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from facetrain.evaluation.callbacks import EvaluationCallback
from facetrain.utils.instantiate import instantiate, instantiate_named
from facetrain.utils.io import ensure_writable_dir, write_json_atomic

log = logging.getLogger(__name__)

__all__ = ["CONFIG_KEY", "EmbeddingModel", "evaluate", "load_embedding_model", "resolve_device"]

# Where FaceRecognitionModule.on_save_checkpoint stores the run's resolved config (plain data).
CONFIG_KEY = "facetrain_config"


class EmbeddingModel(nn.Module):
    """What the evaluation callbacks need from a trained model: ``embed`` (the backbone's raw embeddings).

    It mirrors ``FaceRecognitionModule.embed``; the margin head is not rebuilt, because evaluation never uses it and
    its shape depends on the training class count.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) embeddings; the callbacks normalise after optional flip fusion."""
        return self.backbone(images)


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (or None) picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_embedding_model(
    ckpt_path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[EmbeddingModel, dict[str, Any]]:
    """Rebuild the embedding network of a checkpoint written by the train task.

    The checkpoint is read with ``torch.load(weights_only=True)`` (tensors and plain containers only, no pickled
    code). The backbone is built from the ``model.backbone`` node of the resolved config stored under
    ``facetrain_config`` (with ``pretrained=False``: the weights come from the checkpoint, nothing is downloaded)
    and its ``backbone.*`` weights are loaded strictly.

    Returns:
        The model in eval mode on ``device`` and the checkpoint's stored config.

    Raises:
        FileNotFoundError: No file at ``ckpt_path``.
        KeyError: The checkpoint lacks the stored config or the backbone weights.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(path)!r} is not a file")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    run_config = ckpt.get(CONFIG_KEY)
    if not isinstance(run_config, dict) or "model" not in run_config:
        raise KeyError(f"{path} holds no {CONFIG_KEY!r} config; was it written by facetrain's train task?")
    backbone_cfg = OmegaConf.create(run_config["model"]["backbone"])
    if "pretrained" in backbone_cfg:
        backbone_cfg.pretrained = False
    backbone = instantiate(backbone_cfg)
    state = {k.removeprefix("backbone."): v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    if not state:
        raise KeyError(f"{path} has no backbone.* weights in its state_dict")
    backbone.load_state_dict(state, strict=True)
    model = EmbeddingModel(backbone).to(device).eval()
    return model, {**ckpt, CONFIG_KEY: run_config}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` with every callback of ``cfg.eval`` (``configs/evaluate.yaml`` composed by Hydra).

    Each evaluation set is embedded once; its results (undefined metrics as ``"undefined"`` with a reason) and the
    options used go to ``<output_dir>/metrics.json`` (written atomically), its curves to ``<output_dir>/curves/``.

    Returns:
        The metrics written to ``metrics.json``.
    """
    output_dir = ensure_writable_dir(cfg.paths.output_dir, "paths.output_dir")
    ckpt_path = Path(str(cfg.ckpt_path))
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r} is not a file")
    # Protocol files and image folders are checked before the (possibly large) checkpoint is loaded.
    evaluators: list[EvaluationCallback] = instantiate_named(cfg.get("eval"))
    if not evaluators:
        raise ValueError("eval is empty: choose evaluation sets, e.g. eval=[lfw,ytf]")
    device = resolve_device(cfg.get("device"))
    model, ckpt = load_embedding_model(ckpt_path, device)
    run_config = ckpt[CONFIG_KEY]
    metrics: dict[str, Any] = {
        "ckpt_path": str(ckpt_path.resolve()),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "backbone": run_config["model"]["backbone"].get("model_name"),
        "head": run_config["model"]["head"].get("_target_"),
        "device": str(device),
    }
    for evaluator in evaluators:
        results = evaluator.evaluate(model)
        evaluator.write_curves(evaluator.curve_dir() or output_dir / "curves")
        metrics.update(results)
        summary = ", ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in evaluator.scalars().items())
        log.info("%s: %s", evaluator.name, summary)
    path = write_json_atomic(output_dir / "metrics.json", metrics)
    log.info("metrics written to %s", path)
    return metrics
