"""Runtimes behind ``FaceEmbedder``: PyTorch (a checkpoint or safetensors weights), ONNX Runtime and TorchScript.

Each backend maps ``(N, 3, H, W)`` float32 pixels (0-255, RGB) to final L2-normalised embeddings; a backend whose
exported graph expects normalised input gets the normalisation applied here, from the contract.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from facetrain.inference.contract import CONTRACT_FILE, CONTRACT_KEY, Contract
from facetrain.inference.model import CONFIG_KEY, InferenceModel, NotAFacetrainModelError, backbone_state
from facetrain.inference.model import build_backbone as _build_backbone

__all__ = [
    "Runtime",
    "export_file_and_contract",
    "normalizer",
    "onnx_runtime",
    "safetensors_runtime",
    "torch_runtime",
    "torchscript_runtime",
]

Runtime = Callable[[np.ndarray], np.ndarray]
EXPORT_SUFFIXES = (".onnx", ".pt", ".safetensors")


def torch_runtime(model: InferenceModel, device: torch.device | str = "cpu") -> Runtime:
    """Run an :class:`InferenceModel` (float pixels in) on ``device``."""
    model = model.to(device).eval()

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(pixels).to(device)).float().cpu().numpy()

    return run


def normalizer(contract: Contract, in_graph: bool | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Pixels → what the exported graph takes: unchanged when it normalises inside, else the contract's affine map.

    Args:
        in_graph: Override of the contract's ``export.normalized_in_graph``.
    """
    if in_graph if in_graph is not None else contract.export.get("normalized_in_graph", True):
        return lambda x: x
    scale, shift = contract.affine()
    return lambda x: x * scale - shift


def onnx_runtime(path: Path, contract: Contract, threads: int | None = None) -> Runtime:
    """An ONNX Runtime CPU session on ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = contract.export.get("input_name", session.get_inputs()[0].name)
    out = contract.export.get("output_name", session.get_outputs()[0].name)
    prepare = normalizer(contract)
    return lambda pixels: session.run([out], {inp: np.ascontiguousarray(prepare(pixels))})[0]


def torchscript_runtime(path: Path, contract: Contract) -> Runtime:
    """A TorchScript module written by ``facetrain-export format=torchscript``."""
    module = torch.jit.load(str(path), map_location="cpu").eval()
    prepare = normalizer(contract)

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(prepare(pixels))).numpy()

    return run


def safetensors_runtime(path: Path, device: torch.device | str = "cpu") -> tuple[Runtime, Contract]:
    """The PyTorch model rebuilt from a safetensors export (weights + the config and contract in its metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if CONTRACT_KEY not in metadata or CONFIG_KEY not in metadata:
        raise NotAFacetrainModelError(f"{path} is a safetensors file without facetrain's contract and run config")
    contract = Contract.from_dict(json.loads(metadata[CONTRACT_KEY]), source=str(path))
    backbone = _build_backbone(json.loads(metadata[CONFIG_KEY])["model"]["backbone"])
    backbone.load_state_dict(backbone_state(load_file(str(path))), strict=True)
    return torch_runtime(InferenceModel(backbone, contract), device), contract


def export_file_and_contract(path: str | os.PathLike[str]) -> tuple[Path, Contract]:
    """The model file and contract of an export: a directory with ``facetrain.json``, or a model file (its contract
    from the ``facetrain.json`` beside it, else from the file's own metadata).

    Raises:
        NotAFacetrainModelError: Neither form is found.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / CONTRACT_FILE).is_file():
            raise NotAFacetrainModelError(f"{path} is a directory without {CONTRACT_FILE}: not a facetrain export")
        contract = Contract.read(path / CONTRACT_FILE)
        file = path / str(contract.export.get("file", ""))
        if not contract.export.get("file") or not file.is_file():
            raise NotAFacetrainModelError(f"{path / CONTRACT_FILE} names no model file present in {path}")
        return file, contract
    if path.suffix not in EXPORT_SUFFIXES or not path.is_file():
        raise NotAFacetrainModelError(f"{path} is not an export file ({', '.join(EXPORT_SUFFIXES)})")
    sidecar = path.parent / CONTRACT_FILE
    if sidecar.is_file():
        contract = Contract.read(sidecar)
        if contract.export.get("file") == path.name:
            return path, contract
    return path, _embedded_contract(path)


def _embedded_contract(path: Path) -> Contract:
    try:
        if path.suffix == ".onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            text = props.get(CONTRACT_KEY)
        elif path.suffix == ".pt":
            extra = {"facetrain.json": ""}
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            text = extra["facetrain.json"] or None
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get(CONTRACT_KEY)
    except Exception as error:  # noqa: BLE001 - any parser failure means "not a model file we can read"
        raise NotAFacetrainModelError(f"{path} cannot be read as {path.suffix} model: {error}") from None
    if not text:
        raise NotAFacetrainModelError(f"{path} carries no facetrain contract (and no {CONTRACT_FILE} beside it)")
    return Contract.from_dict(json.loads(text), source=str(path))
