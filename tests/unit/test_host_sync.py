"""No device-to-host read on a training step that does not log (issue: training throughput).

:class:`HostReadCounter` patches the Python-level reads (``item``, ``bool``, ``float``, ``tolist``, ``.cpu()``, mask
indexing, ...); on a CPU every tensor is a host tensor, so a read it counts here is a synchronisation on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import facetrain.losses as heads
from facetrain.callbacks.host_reads import HostReadsPerStep
from facetrain.models.module import FaceRecognitionModule
from facetrain.tasks.train import train
from facetrain.training.host_sync import HostReadCounter
from tests.conftest import bare_cpu_trainer

HEADS = sorted(n for n in heads.__all__ if n.endswith("Head") and n not in ("FaceHead", "CosineHead"))


def test_counter_counts_each_kind_of_read_once_and_nothing_else() -> None:
    x = torch.arange(6.0)
    with HostReadCounter() as reads:
        y = (x * 2 + 1).exp().sum()  # device work only
        z = x[torch.tensor([1, 2])]  # integer index: no read
        w = torch.where(x > 2, x, 0.0)
    assert reads.count == 0
    del y, z, w
    with HostReadCounter() as reads:
        x.sum().item()
        bool(x.sum() > 0)
        float(x[0])
        int(x[1])
        x.tolist()  # counted once, not once per element
        x.cpu()
        x[x > 2]  # a boolean mask: the result's size needs the mask on the host
        x.nonzero()
        if x.any():
            pass
    assert reads.count == 9
    assert any("test_host_sync.py" in site for site in reads.sites)
    x.sum().item()  # after the block: torch's own methods are back
    assert reads.count == 9


class _Linear(nn.Module):
    embedding_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.mark.parametrize("head", HEADS)
def test_no_head_reads_the_device_on_a_step_that_does_not_log(head: str) -> None:
    module = FaceRecognitionModule(
        backbone=_Linear(),
        head=lambda **kw: getattr(heads, head)(**kw),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, fused=True),
        num_classes=4,
    )
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 8, generator=gen), torch.randint(0, 4, (48,), generator=gen))
    per_step = HostReadsPerStep()
    trainer = bare_cpu_trainer(
        max_steps=12,
        log_every_n_steps=4,
        callbacks=[per_step],
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    _assert_quiet_steps(per_step)


#: Reads of host memory that the counter cannot tell from device reads on a CPU: a worker's shared-memory batch
#: buffers are mapped (``.numpy()`` of a shared CPU tensor) when its first batches arrive.
HOST_MEMORY_SITES = ("shared_batches.py",)


def _assert_quiet_steps(per_step: HostReadsPerStep) -> None:
    for sites in per_step.sites.values():
        for site in [s for s in sites if s.startswith(HOST_MEMORY_SITES)]:
            del sites[site]
    steps = [
        (step, logging_step, sum(per_step.sites.get(step, {}).values())) for step, logging_step, _ in per_step.steps
    ]
    assert len(steps) >= 8
    # The first update checks on the host (see FaceRecognitionModule.on_before_optimizer_step); logging steps read.
    quiet = {step: reads for step, logging_step, reads in steps[1:] if not logging_step}
    noisy = [reads for _, logging_step, reads in steps if logging_step]
    loud = {step: per_step.sites[step] for step, reads in quiet.items() if reads}
    assert quiet and not loud, f"host reads on steps that do not log: {loud}"
    assert noisy and all(reads > 0 for reads in noisy)  # the counter does see what a logging step reads


@pytest.mark.parametrize("uint8_batches", [False, True], ids=["float", "uint8+device-augment"])
def test_train_py_run_reads_the_device_only_at_logging_steps(compose_cfg, uint8_batches: bool) -> None:  # noqa: ANN001
    """The whole of ``python train.py`` in-process: callbacks, TensorBoard logger, progress bar, default head."""
    cfg = compose_cfg(
        "experiment=smoke",
        "trainer.log_every_n_steps=4",
        "trainer.enable_progress_bar=true",
        "data.batch_size=8",
        # Decoding runs in a worker: host tensors there are not device reads (the counter only sees this process).
        "data.num_workers=1",
        f"data.uint8_batches={str(uint8_batches).lower()}",
        "eval=[lfw]",
    )
    with open_dict(cfg):  # the counter first, so that the epoch-end work lies outside every step's window
        cfg.callbacks = {"reads": {"_target_": "facetrain.callbacks.host_reads.HostReadsPerStep"}, **cfg.callbacks}
    built: list[HostReadsPerStep] = []
    original = HostReadsPerStep.__init__

    def keep(self: HostReadsPerStep) -> None:
        original(self)
        built.append(self)

    HostReadsPerStep.__init__ = keep  # type: ignore[method-assign]
    try:
        metrics = train(cfg)
    finally:
        HostReadsPerStep.__init__ = original  # type: ignore[method-assign]
    assert metrics["global_step"] >= 8
    _assert_quiet_steps(built[0])


def test_cam_softmax_schedule_continues_from_a_loaded_step_without_reading_it_each_step() -> None:
    source = heads.CamSoftmaxHead(embedding_size=4, num_classes=3)
    for _ in range(250):
        source.on_optimizer_step()
    resumed = heads.CamSoftmaxHead(embedding_size=4, num_classes=3)
    resumed.load_state_dict(source.state_dict())
    with HostReadCounter() as reads:
        source.on_optimizer_step()
        resumed.on_optimizer_step()
    assert reads.count == 0
    assert int(resumed.step) == 251
    assert float(resumed.c) == float(source.c) == heads.LinearC().value(251)
