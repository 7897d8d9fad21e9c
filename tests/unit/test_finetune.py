"""Fine-tuning: model.init_from (checkpoint, safetensors), classifier transfer, freezing, timm weights from a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from facetrain.inference.model import build_backbone
from facetrain.losses import ArcFaceHead
from facetrain.models.backbone import FaceBackbone
from facetrain.models.finetune import INIT_RECORD_FILE
from facetrain.models.module import FaceRecognitionModule
from facetrain.tasks.train import train
from tests.conftest import bare_cpu_trainer
from tests.inference_helpers import make_checkpoint, run_config

CONFIG = run_config("resnet18", 32, embedding_size=16)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 5-class checkpoint with random weights and non-trivial BatchNorm statistics."""
    return make_checkpoint(tmp_path_factory.mktemp("src") / "src.ckpt", CONFIG, num_classes=5, seed=1)


def _module(num_classes: int, **finetune: object) -> FaceRecognitionModule:
    torch.manual_seed(123)  # a different initialisation from the source's
    return FaceRecognitionModule(
        backbone=build_backbone(CONFIG["model"]["backbone"]),
        head=lambda **kw: ArcFaceHead(**kw, scale=16.0),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
        num_classes=num_classes,
        **finetune,
    )


def _fit(module: FaceRecognitionModule, steps: int = 3) -> None:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(24, 3, 32, 32, generator=gen), torch.randint(0, module.num_classes, (24,)))
    trainer = bare_cpu_trainer(
        max_steps=steps,
    )
    trainer.fit(module, DataLoader(data, batch_size=8))


def _backbone_state(module: FaceRecognitionModule) -> dict[str, torch.Tensor]:
    return {f"backbone.{k}": v.detach().clone() for k, v in module.backbone.state_dict().items()}


def test_init_from_checkpoint_is_bit_identical(source: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = source
    same = _module(5, init_from=str(path))
    loaded = _backbone_state(same)
    assert loaded.keys() == {k for k in state if k.startswith("backbone.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)  # weights and BatchNorm statistics
    assert torch.equal(same.head.weight, state["head.weight"])
    assert same.init_record["classifier"] == {"loaded": True, "tensors": 1}
    assert same.init_record["init_from"] == str(path.resolve()) and same.init_record["format"] == "checkpoint"

    other = _module(7, init_from=str(path))  # a different class count: backbone only
    assert all(torch.equal(_backbone_state(other)[k], state[k]) for k in loaded)
    assert not other.init_record["classifier"]["loaded"] and "[5, 16]" in other.init_record["classifier"]["reason"]
    assert other.head.weight.shape == (7, 16)
    fresh = _module(5, init_from=str(path), init_classifier=False)
    assert not torch.equal(fresh.head.weight, state["head.weight"])
    assert fresh.init_record["classifier"]["reason"] == "model.init_classifier=false"
    assert _module(5).init_record is None


def test_init_from_safetensors(source: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    _, state = source
    save_file(state, str(tmp_path / "w.safetensors"))
    module = _module(5, init_from=str(tmp_path / "w.safetensors"))
    assert all(torch.equal(v, state[k]) for k, v in _backbone_state(module).items())
    assert module.init_record["format"] == "safetensors" and module.init_record["classifier"]["loaded"]


def test_frozen_backbone_does_not_change(source: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = source
    module = _module(7, init_from=str(path), freeze_backbone=True)
    head_before = module.head.weight.detach().clone()
    _fit(module)
    after = _backbone_state(module)
    assert all(torch.equal(after[k], state[k]) for k in after)  # parameters and running statistics
    assert not torch.equal(module.head.weight, head_before)  # the head did train
    assert module.init_record["frozen"]["trainable_backbone_parameters"] == 0


def test_trainable_stages(source: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = source
    module = _module(5, init_from=str(path), trainable_stages=1)
    assert module.init_record["frozen"]["trainable_stages"] == ["layer4"]
    _fit(module)
    after = _backbone_state(module)
    changed = {k for k in after if not torch.equal(after[k], state[k])}
    neck_or_layer4 = ("backbone.trunk.layer4.", "backbone.norm.", "backbone.fc.", "backbone.features.")
    assert changed and all(k.startswith(neck_or_layer4) for k in changed)
    assert any(k.startswith("backbone.trunk.layer4.") for k in changed)
    # Without freeze_bn_stats the frozen stages' BatchNorm statistics follow the new data.
    loose = _module(5, init_from=str(path), trainable_stages=1, freeze_bn_stats=False)
    _fit(loose, steps=1)
    assert not torch.equal(loose.backbone.trunk.bn1.running_mean, state["backbone.trunk.bn1.running_mean"])
    assert torch.equal(loose.backbone.trunk.bn1.weight, state["backbone.trunk.bn1.weight"])  # weights still frozen
    with pytest.raises(ValueError, match=r"model.trainable_stages must be an integer in \[0, 5\].*layer4"):
        _module(5, trainable_stages=9)


def test_bad_init_from(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.init_from='.*missing.ckpt' is not a file"):
        _module(5, init_from=str(tmp_path / "missing.ckpt"))
    other, _ = make_checkpoint(tmp_path / "vit.ckpt", run_config("convnext_atto", 32, embedding_size=16))
    with pytest.raises(ValueError, match=r"does not fit backbone 'resnet18'"):
        _module(5, init_from=str(other))
    torch.save({"epoch": 1}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="has no state_dict: not a facetrain checkpoint"):
        _module(5, init_from=str(tmp_path / "plain.ckpt"))


def test_timm_weights_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(7)
    reference = timm.create_model("resnet18", num_classes=0)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    backbone = FaceBackbone("resnet18", 16, input_size=32, pretrained_file=str(tmp_path / "resnet18.safetensors"))
    trunk = backbone.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in reference.state_dict().items())
    with pytest.raises(FileNotFoundError, match="backbone.pretrained_file='nope.pth' is not a file"):
        FaceBackbone("resnet18", 16, input_size=32, pretrained_file="nope.pth")


def test_train_task_records_what_was_loaded(
    compose_cfg, source: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    path, _ = source
    cfg = compose_cfg(
        "experiment=smoke",
        "backbone.input_size=32",
        "backbone.embedding_size=16",
        "synthetic.image_size=32",
        f"model.init_from={path}",
        "model.freeze_backbone=true",
        "+trainer.max_steps=1",
        "eval=[]",
        "callbacks=none",
        "logger=none",
    )
    train(cfg)
    record = json.loads((tmp_path / "run" / INIT_RECORD_FILE).read_text())
    assert record["init_from"] == str(path.resolve()) and record["classifier"]["loaded"] is False  # 20 != 5 classes
    assert record["frozen"]["freeze_backbone"] is True
