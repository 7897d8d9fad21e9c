"""The GPU-speed options of the training module, checked on the CPU: channels-last layout and torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from facetrain.losses import CamSoftmaxHead
from facetrain.models.module import FaceRecognitionModule
from tests.conftest import bare_cpu_trainer


class TinyConvNet(nn.Module):
    """Conv-BN-ReLU, pooled, then a linear embedding: enough for the memory-format and compile paths."""

    embedding_size = 16

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1)
        )
        self.fc = nn.Linear(8, self.embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _module(backbone: nn.Module, **options: bool) -> FaceRecognitionModule:
    return FaceRecognitionModule(
        backbone=backbone,
        head=lambda **kw: CamSoftmaxHead(**kw),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, fused=True),
        num_classes=5,
        **options,
    )


def _fit(module: FaceRecognitionModule, steps: int = 4) -> None:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 16, 16, generator=gen), torch.randint(0, 5, (32,), generator=gen))
    trainer = bare_cpu_trainer(
        max_steps=steps,
    )
    trainer.fit(module, DataLoader(data, batch_size=8))


def test_channels_last_trains_like_the_default_layout() -> None:
    torch.manual_seed(0)
    backbone = TinyConvNet()
    plain, nhwc = _module(copy.deepcopy(backbone)), _module(copy.deepcopy(backbone), channels_last=True)
    nhwc.head.load_state_dict(plain.head.state_dict())
    assert nhwc.backbone.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(nhwc.embed(images), plain.embed(images), rtol=1e-5, atol=1e-6)
    _fit(plain)
    _fit(nhwc)
    for a, b in zip(plain.parameters(), nhwc.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # compiling with inductor on a CPU takes tens of seconds
def test_compiled_backbone_trains_like_eager_and_keeps_checkpoint_keys() -> None:
    torch.manual_seed(0)
    backbone = TinyConvNet()
    eager, compiled = _module(copy.deepcopy(backbone)), _module(copy.deepcopy(backbone), compile=True)
    compiled.head.load_state_dict(eager.head.state_dict())
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints load either way
    _fit(eager)
    from torch._dynamo.utils import counters

    counters.clear()
    _fit(compiled)
    assert counters["stats"]["unique_graphs"] >= 1  # really compiled, not silently eager
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_trainer_gpu_composes_the_fast_path_and_leaves_the_default_alone(compose_cfg) -> None:  # noqa: ANN001
    gpu = compose_cfg("trainer=gpu", "eval=[lfw,ytf,lfw_bin]")
    assert gpu.trainer.precision == "bf16-mixed" and gpu.trainer.benchmark is True
    assert gpu.trainer.log_every_n_steps == 50 and gpu.model.channels_last is True
    assert gpu.data.uint8_batches is True and gpu.data.pin_memory is True
    assert {gpu.eval[name].batch_size for name in gpu.eval} == {512}
    default = compose_cfg("eval=[lfw,ytf,lfw_bin]")
    assert default.trainer.precision == "32-true" and default.model.channels_last is False
    assert default.data.uint8_batches is False and default.trainer.log_every_n_steps == 1
    assert {default.eval[name].batch_size for name in default.eval} == {128}
