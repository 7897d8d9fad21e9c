"""Export to ONNX / TorchScript / safetensors: parity with PyTorch for every shipped backbone family, and failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from facetrain.inference.contract import CONTRACT_FILE, CONTRACT_KEY, Contract
from facetrain.inference.embedder import FaceEmbedder
from facetrain.inference.export import PARITY_ATOL, ExportError, export_checkpoint
from tests.inference_helpers import faces, make_checkpoint, run_config

# (model_name, input size): tiny crops and random weights keep each export to about a second on 2 CPU cores.
BACKBONES = [
    ("resnet18", 32),
    ("iresnet18", 32),
    ("mobilefacenet", 32),
    ("sphereface20", [32, 24]),  # a non-square crop, as SphereFace's 112x96
    ("convnext_atto", 32),
    ("vit_tiny_patch16_224", 32),  # rebuilt by timm for img_size=32
    ("efficientnet_b0", 32),  # backbone=timm backbone.model_name=efficientnet_b0
]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize(("name", "size"), BACKBONES, ids=[b[0] for b in BACKBONES])
def test_export_parity_at_batch_1_and_7(tmp_path: Path, name: str, size: int | list[int], fmt: str) -> None:
    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt", run_config(name, size))
    hw = (size, size) if isinstance(size, int) else tuple(size)
    contract = export_checkpoint(ckpt, tmp_path / "out", fmt, faces(7, hw), "test faces", batch_sizes=(1, 7))
    parity = contract.export["parity"]
    assert parity["batch_sizes"] == [1, 7]
    assert 0.0 <= parity["max_abs_diff"] <= PARITY_ATOL
    # The export reloads as a FaceEmbedder and agrees with the checkpoint at both batch sizes (dynamic batch axis).
    exported, reference = FaceEmbedder.from_export(tmp_path / "out"), FaceEmbedder.from_checkpoint(ckpt)
    for batch in (1, 7):
        x = faces(batch, hw, seed=batch)
        a, b = exported.embed(x), reference.embed(x)
        assert a.shape == (batch, 16) and a.dtype == np.float32
        assert np.abs(a - b).max() <= PARITY_ATOL
        assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_onnx_graph_contract_and_flip_fusion(tmp_path: Path) -> None:
    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt", run_config("resnet18", 32, flip="concat"))
    contract = export_checkpoint(ckpt, tmp_path / "out", "onnx", faces(4), "test faces", opset=18)
    proto = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert proto.opset_import[0].version == 18
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["embedding"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    embedded = json.loads({p.key: p.value for p in proto.metadata_props}[CONTRACT_KEY])
    assert Contract.from_dict(embedded).flip == "concat"
    written = json.loads((tmp_path / "out" / CONTRACT_FILE).read_text())
    assert written["embedding"]["size"] == 32 and written["flip"] == "concat"  # concat doubles the width
    assert written["export"]["parity"]["max_abs_diff"] == contract.export["parity"]["max_abs_diff"]
    assert written["thresholds"]["accuracy_optimal"] == 0.3


def test_normalisation_outside_the_graph(tmp_path: Path) -> None:
    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    export_checkpoint(ckpt, tmp_path / "out", "onnx", faces(3), "test faces", normalize_in_graph=False)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = faces(2)
    normalised = ((x.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.5).astype(np.float32)
    direct = session.run(["embedding"], {"input": normalised})[0]
    assert np.abs(direct - FaceEmbedder.from_checkpoint(ckpt).embed(x)).max() <= PARITY_ATOL
    assert np.abs(FaceEmbedder.from_export(tmp_path / "out").embed(x) - direct).max() <= 1e-5


def test_parity_failure_is_loud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import facetrain.inference.export as export_module

    real = export_module._runtime

    def drifting(fmt: str, path: Path) -> tuple[object, str]:
        run, name = real(fmt, path)  # a runtime whose embeddings are off by 3e-4 in one coordinate
        return (lambda x: run(x) + np.eye(1, 16, 3, dtype=np.float32) * 3e-4), name

    monkeypatch.setattr(export_module, "_runtime", drifting)
    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(ExportError, match=r"does not reproduce the PyTorch embeddings: max abs diff 0.0003 > 0.0001"):
        export_checkpoint(ckpt, tmp_path / "out", "onnx", faces(2), "test faces")
    assert (tmp_path / "out" / "model.onnx.rejected").is_file()
    assert not (tmp_path / "out" / "model.onnx").exists() and not (tmp_path / "out" / CONTRACT_FILE).exists()


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    config = run_config("svd_net", target="tests.inference_helpers.SvdBackbone", embedding_size=4)
    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt", config)
    with pytest.raises(ExportError, match=r"backbone 'svd_net' failed at operator aten::linalg_svdvals \(opset 17\)"):
        export_checkpoint(ckpt, tmp_path / "out", "onnx", faces(2), "test faces")


def test_safetensors_export_and_bad_arguments(tmp_path: Path) -> None:
    ckpt, state = make_checkpoint(tmp_path / "m.ckpt")
    contract = export_checkpoint(ckpt, tmp_path / "out", "safetensors", faces(2), "test faces")
    assert contract.export["parity"]["bit_identical"] is True
    from safetensors.torch import load_file

    loaded = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    x = faces(3)
    from_weights = FaceEmbedder.from_export(tmp_path / "out" / "model.safetensors").embed(x)
    assert np.array_equal(from_weights, FaceEmbedder.from_checkpoint(ckpt).embed(x))
    with pytest.raises(ExportError, match="format must be one of"):
        export_checkpoint(ckpt, tmp_path / "o2", "tflite", faces(2), "test faces")
    with pytest.raises(ExportError, match="opset must be >= 17"):
        export_checkpoint(ckpt, tmp_path / "o3", "onnx", faces(2), "test faces", opset=13)
    with pytest.raises(ExportError, match=r"parity faces must be \(N, 32, 32, 3\) uint8"):
        export_checkpoint(ckpt, tmp_path / "o4", "onnx", faces(2, 48), "test faces")


def test_export_task_takes_parity_faces_from_the_eval_set(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from facetrain.tasks.export import export
    from tests.conftest import CONFIGS

    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(
                "export",
                overrides=[
                    f"paths.root_dir={tmp_path}",
                    f"paths.output_dir={tmp_path / 'run'}",
                    f"ckpt_path={ckpt}",
                    "experiment=smoke",
                    "synthetic.image_size=32",
                    "parity_images=5",
                ],
            )
    finally:
        GlobalHydra.instance().clear()
    assert cfg.format == "onnx" and cfg.opset == 17 and cfg.normalize_in_graph is True
    written = export(cfg)
    parity = written["export"]["parity"]
    assert parity["faces"] == "eval set lfw (5 images)" and parity["max_abs_diff"] <= PARITY_ATOL
    assert (tmp_path / "run" / "model.onnx").is_file()
    assert json.loads((tmp_path / "run" / CONTRACT_FILE).read_text())["export"]["parity"] == parity
    cfg.ckpt_path = str(tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        export(cfg)
