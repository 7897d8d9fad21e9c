"""Export a checkpoint to ONNX, TorchScript or safetensors, and prove the exported model computes the same embeddings.

The exported graph is :class:`~facetrain.inference.model.InferenceModel`: optional normalisation, the backbone, the
contract's flip fusion and the L2 norm, so a runtime only has to feed aligned crops. Every ONNX and TorchScript
export is run on real faces right after it is written and compared with the PyTorch model; an export whose
normalised embeddings differ by more than ``atol`` is renamed ``*.rejected`` and the export fails. The measured
difference goes into ``facetrain.json``.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): the torch.export-based one needs the extra
``onnxscript`` package, and the TorchScript-based one handles every backbone facetrain ships (tests/unit/
test_inference_export.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facetrain.inference.backends import normalizer
from facetrain.inference.contract import CONTRACT_KEY, Contract
from facetrain.inference.model import CONFIG_KEY, InferenceModel, load_checkpoint

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "INPUT_NAME", "OUTPUT_NAME", "ExportError", "export_checkpoint", "parity"]

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt", "safetensors": "model.safetensors"}
INPUT_NAME, OUTPUT_NAME = "input", "embedding"
DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4


class ExportError(RuntimeError):
    """An export that could not be written or does not reproduce the PyTorch embeddings."""


def pixels_nchw(faces: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 crops → ``(N, 3, H, W)`` float32 pixels (the exported model's input)."""
    return np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32)


def _example(contract: Contract, batch: int = 2) -> torch.Tensor:
    # Batch 2, not 1: a batch of one would let the tracer bake "1" into reshapes that then break dynamic batches.
    return torch.rand(batch, 3, *contract.input_size) * contract.max_pixel_value


def _operator(message: str) -> str | None:
    """The operator an exporter error names (``aten::linalg_svdvals``, ``prim::...``), if any."""
    match = re.search(r"\b(?:aten|prim|onnx)::[\w.]+", message) or re.search(r"operator '([^']+)'", message)
    return None if match is None else match.group(match.lastindex or 0)


def export_onnx(model: InferenceModel, path: Path, contract: Contract, opset: int = DEFAULT_OPSET) -> None:
    """Write ``model`` as ONNX with a dynamic batch axis and the contract in its metadata.

    Raises:
        ExportError: The exporter fails; the message names the unsupported operator when it can.
    """
    import onnx

    if opset < 17:
        raise ExportError(f"ONNX opset must be >= 17 (LayerNormalization and friends), got {opset}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(
                model,
                (_example(contract),),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as error:  # noqa: BLE001 - the exporter raises many types; all mean "cannot export"
        op = _operator(str(error))
        backbone = contract.model.get("backbone")
        what = f"operator {op}" if op else type(error).__name__
        raise ExportError(
            f"ONNX export of backbone {backbone!r} failed at {what} (opset {opset}): {str(error).splitlines()[0]}. "
            "Try a newer opset, format=torchscript, or another backbone"
        ) from error
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    # A lone model.onnx stays self-describing: FaceEmbedder.from_export reads the contract from here too.
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, json.dumps(contract.to_dict())
    onnx.save(proto, str(path))


def export_torchscript(model: InferenceModel, path: Path, contract: Contract) -> None:
    """Trace ``model`` to TorchScript with the contract as an extra file (``facetrain.json``)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation and tracer notices
        traced = torch.jit.trace(model, (_example(contract),), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={"facetrain.json": json.dumps(contract.to_dict())})


def export_safetensors(state_dict: dict[str, torch.Tensor], path: Path, contract: Contract, run_config: Any) -> None:
    """Write the module's weights (backbone and head) with the contract and run config as string metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    metadata = {CONTRACT_KEY: json.dumps(contract.to_dict()), CONFIG_KEY: json.dumps(run_config)}
    save_file(tensors, str(path), metadata=metadata)


def parity(reference: nn.Module, runtime: Any, faces: np.ndarray, batch_sizes: tuple[int, ...]) -> float:
    """Largest absolute difference between the PyTorch and the runtime's embeddings over ``batch_sizes``.

    Args:
        reference: The PyTorch :class:`InferenceModel` (float pixels in).
        runtime: ``runtime(pixels_nchw) -> embeddings`` of the exported model.
        faces: ``(N, H, W, 3)`` uint8 aligned faces.
        batch_sizes: Batch sizes to run (each takes the first ``b`` faces; the full batch is always included).
    """
    worst = 0.0
    for b in sorted({min(int(b), len(faces)) for b in batch_sizes} | {len(faces)}):
        x = pixels_nchw(faces[:b])
        with torch.no_grad():
            expected = reference(torch.from_numpy(x)).numpy()
        got = np.asarray(runtime(x), dtype=np.float32)
        if got.shape != expected.shape:
            raise ExportError(f"exported model returns shape {got.shape} for batch {b}, expected {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def _runtime(fmt: str, path: Path) -> tuple[Any, str]:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return (lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]), f"onnxruntime {ort.__version__}"
    loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(x)).numpy()

    return run, f"torch.jit {torch.__version__}"


def export_checkpoint(
    ckpt_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fmt: str,
    faces: np.ndarray,
    faces_source: str,
    opset: int = DEFAULT_OPSET,
    normalize_in_graph: bool = True,
    atol: float = PARITY_ATOL,
    batch_sizes: tuple[int, ...] = (1,),
) -> Contract:
    """Export a checkpoint to ``<out_dir>/model.{onnx,pt,safetensors}`` plus ``<out_dir>/facetrain.json``.

    Args:
        faces: ``(N, H, W, 3)`` uint8 aligned faces of the contract's size for the parity check.
        faces_source: Where the faces come from (recorded).
        normalize_in_graph: ONNX/TorchScript take float pixels (0-255, RGB) and normalise inside; false leaves
            normalisation with mean/std of the contract to the caller.
        atol: Parity bound on the max absolute difference of the normalised embeddings.
        batch_sizes: Extra batch sizes checked besides the full face batch (1 proves the dynamic batch axis).

    Returns:
        The contract as written to ``facetrain.json``.

    Raises:
        ExportError: Unknown format, an exporter failure, or parity worse than ``atol``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    backbone, contract, ckpt = load_checkpoint(ckpt_path)
    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.shape[1:] != (*contract.input_size, 3) or faces.dtype != np.uint8 or not len(faces):
        raise ExportError(f"parity faces must be (N, {contract.input_size[0]}, {contract.input_size[1]}, 3) uint8")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FORMATS[fmt]
    details: dict[str, Any] = {"format": fmt, "file": path.name, "checkpoint": str(Path(ckpt_path).resolve())}
    if fmt == "safetensors":
        export_safetensors(ckpt["state_dict"], path, contract, ckpt[CONFIG_KEY])
        from safetensors.torch import load_file

        reloaded = load_file(str(path))
        same = reloaded.keys() == ckpt["state_dict"].keys()
        same = same and all(torch.equal(v, ckpt["state_dict"][k]) for k, v in reloaded.items())
        if not same:
            raise ExportError(f"{path} does not reload bit-identical to the checkpoint's state_dict")
        details["parity"] = {"check": "tensors reloaded", "bit_identical": True}
    else:
        model = InferenceModel(backbone, contract, normalize_input=normalize_in_graph).eval()
        details.update(normalized_in_graph=normalize_in_graph, input_name=INPUT_NAME, output_name=OUTPUT_NAME)
        details.update(dynamic_batch=True, input_dtype="float32", input_layout="NCHW")
        if fmt == "onnx":
            details["opset"] = opset
            export_onnx(model, path, contract.replace(export=dict(details)), opset)
        else:
            export_torchscript(model, path, contract.replace(export=dict(details)))
        runtime, runtime_name = _runtime(fmt, path)
        reference = InferenceModel(backbone, contract, normalize_input=True).eval()
        prepare = normalizer(contract, in_graph=normalize_in_graph)  # the runtime, like the reference, takes pixels
        diff = parity(reference, lambda x: runtime(prepare(x)), faces, batch_sizes)
        details["parity"] = {
            "max_abs_diff": diff, "atol": atol, "images": len(faces), "faces": faces_source,
            "batch_sizes": sorted({min(b, len(faces)) for b in batch_sizes} | {len(faces)}), "runtime": runtime_name,
        }  # fmt: skip
        if not diff <= atol:
            rejected = path.rename(path.with_name(path.name + ".rejected"))
            raise ExportError(
                f"{fmt} export does not reproduce the PyTorch embeddings: max abs diff {diff:.3g} > {atol:g} on "
                f"{len(faces)} faces from {faces_source}; the file was kept as {rejected} for inspection"
            )
    final = contract.replace(export=details)
    final.write(out)
    log.info("exported %s to %s (%s)", ckpt_path, path, details["parity"])
    return final
