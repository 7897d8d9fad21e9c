"""The evaluation task: rebuild a trained network from its checkpoint (or read stored embeddings), run the eval
protocols, write metrics.json."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from facetrain.callbacks.evaluation import Evaluation
from facetrain.data.world import check_datasets
from facetrain.evaluation.embedding_files import read_embeddings, write_embeddings
from facetrain.inference.embedder import FaceEmbedder
from facetrain.inference.model import load_checkpoint
from facetrain.models.embedding import EmbeddingModel
from facetrain.utils.instantiate import instantiate_named
from facetrain.utils.io import ensure_writable_dir, write_json_atomic
from facetrain.utils.safe_load import CONFIG_KEY

log = logging.getLogger(__name__)

#: What an evaluation reads, exactly one per run: a checkpoint, an export, or the embeddings an evaluation wrote.
INPUT_KEYS = ("ckpt_path", "model_path", "embeddings_dir")

__all__ = [
    "INPUT_KEYS",
    "ExportedBackbone",
    "evaluate",
    "load_embedding_model",
    "load_exported_model",
    "resolve_device",
]


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (or None) picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_embedding_model(
    ckpt_path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[EmbeddingModel, dict[str, Any]]:
    """Rebuild the embedding network of a checkpoint written by the train task.

    The checkpoint is read weights-only (tensors and plain containers, no pickled code) and the backbone rebuilt
    from the config stored under :data:`~facetrain.utils.safe_load.CONFIG_KEY` by
    :func:`facetrain.inference.model.load_checkpoint` (with pretrained loading off: the weights come from the
    checkpoint), its ``backbone.*`` weights loaded strictly. Only the backbone's ``_target_`` is rebuilt from the
    stored config (the callbacks' and evaluation sets' come from this run's config), so checkpoints written before the
    callbacks moved to ``facetrain.callbacks`` evaluate unchanged.

    Returns:
        The model in eval mode on ``device`` and the checkpoint (its stored run config under ``CONFIG_KEY``).

    Raises:
        FileNotFoundError: No file at ``ckpt_path``.
        NotAFacetrainModelError: The checkpoint lacks the stored config or the backbone weights.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(path)!r} is not a file")
    backbone, _, ckpt = load_checkpoint(path)
    return EmbeddingModel(backbone).to(device).eval(), ckpt


class ExportedBackbone(nn.Module):
    """An exported model (ONNX Runtime / TorchScript, via ``FaceEmbedder``) behind the backbone interface.

    The evaluation callbacks hand over images normalised by the evaluation transform; they are mapped back to the
    pixels the exported graph takes with the contract's mean/std. Its embeddings are final (L2-normalised, flip
    fused as in the contract), so the callbacks' own normalisation leaves them unchanged.
    """

    def __init__(self, embedder: FaceEmbedder) -> None:
        super().__init__()
        self.embedder = embedder
        self.scale, self.shift = embedder.contract.affine()  # normalised = pixels * scale - shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images.float().cpu().numpy() + self.shift) / self.scale
        return torch.from_numpy(self.embedder.runtime(pixels))


def load_exported_model(model_path: str | os.PathLike[str]) -> tuple[EmbeddingModel, FaceEmbedder]:
    """An export directory or model file (``model.onnx``, ``model.pt``) as an :class:`EmbeddingModel`."""
    embedder = FaceEmbedder.from_export(model_path)
    return EmbeddingModel(ExportedBackbone(embedder)).eval(), embedder


def _model_metrics(cfg: DictConfig, path: Path, evaluators: list[Evaluation]) -> tuple[EmbeddingModel, dict[str, Any]]:
    """The embedding model of ``ckpt_path`` or ``model_path`` and what ``metrics.json`` records about it."""
    if cfg.get("model_path") is not None:
        model, embedder = load_exported_model(path)
        for evaluator in evaluators:  # the export fuses flips itself, as its contract says; a second fusion differs
            if evaluator.flip not in ("none", embedder.contract.flip):
                log.warning(
                    "eval.%s.flip=%s but the export fuses flip=%s in its graph; set eval.%s.flip=none to evaluate the "
                    "export as it runs",
                    evaluator.name, evaluator.flip, embedder.contract.flip, evaluator.name,
                )  # fmt: skip
        info = embedder.contract.model
        metrics: dict[str, Any] = {"model_path": str(path.resolve()), "format": embedder.contract.export.get("format")}
        metrics.update({k: info.get(k) for k in ("epoch", "global_step", "backbone", "head")}, device="cpu")
        return model, metrics
    device = resolve_device(cfg.get("device"))
    model, ckpt = load_embedding_model(path, device)
    run_config = ckpt[CONFIG_KEY]
    return model, {
        "ckpt_path": str(path.resolve()),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "backbone": run_config["model"]["backbone"].get("model_name"),
        "head": run_config["model"]["head"].get("_target_"),
        "device": str(device),
    }


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` (or ``model_path``) with every evaluation of ``cfg.eval``
    (``configs/evaluate.yaml`` composed by Hydra), or recompute the metrics from ``embeddings_dir``.

    Each evaluation set is embedded once; its results (undefined metrics as ``"undefined"`` with a reason) and the
    options used go to ``<output_dir>/metrics.json`` (written atomically), its curves to ``<output_dir>/curves/`` and
    its embeddings to ``<output_dir>/embeddings/<set>.npy`` with the image order in ``<set>.txt``. With
    ``embeddings_dir`` (such a folder) no model is loaded: the protocols run on the stored embeddings, which must list
    the configured set's images in its order.

    Returns:
        The metrics written to ``metrics.json``.
    """
    # Evaluation sets of one world, real ones present; the training data is the checkpoint's, so data is not read.
    check_datasets(cfg, sections=("eval",))
    output_dir = ensure_writable_dir(cfg.paths.output_dir, "paths.output_dir")
    given = [key for key in INPUT_KEYS if cfg.get(key) is not None]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of ckpt_path=<checkpoint>, model_path=<export dir or model.onnx> and "
            f"embeddings_dir=<run dir>/embeddings, got {given or 'none'}"
        )
    source = Path(str(cfg.get(given[0])))
    if not source.exists():
        raise FileNotFoundError(f"{given[0]}={str(source)!r} not found")
    # Protocol files and image folders are checked before the (possibly large) checkpoint is loaded.
    evaluators: list[Evaluation] = instantiate_named(cfg.get("eval"))
    if not evaluators:
        raise ValueError("eval is empty: choose evaluation sets, e.g. eval=[lfw,ytf]")
    stored: list[np.ndarray | None] = [None] * len(evaluators)
    if given[0] == "embeddings_dir":
        metrics: dict[str, Any] = {"embeddings_dir": str(source.resolve())}
        stored = [read_embeddings(source, e.name, e.paths) for e in evaluators]  # all checked before any protocol
    else:
        model, metrics = _model_metrics(cfg, source, evaluators)
    for evaluator, embeddings in zip(evaluators, stored, strict=True):
        if embeddings is None:
            embeddings = evaluator.embed(model)
            if evaluator.save_embeddings:
                directory = (evaluator.output_dir() or output_dir) / "embeddings"
                write_embeddings(directory, evaluator.name, embeddings, evaluator.paths)
        results = evaluator.evaluate_embeddings(embeddings)
        evaluator.write_curves(evaluator.curve_dir() or output_dir / "curves")
        metrics.update(results)
        summary = ", ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in evaluator.scalars().items())
        log.info("%s: %s", evaluator.name, summary)
    path = write_json_atomic(output_dir / "metrics.json", metrics)
    log.info("metrics written to %s", path)
    return metrics
