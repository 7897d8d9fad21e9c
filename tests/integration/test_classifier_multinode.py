"""Two CPU processes started as two nodes through Lightning, with a sharded classifier that DDP does not all-reduce.

The test starts this file twice, as ``torchrun``-less multi-node training is started by hand or by a cluster
scheduler: the same command on each node with ``NODE_RANK=0`` / ``1``, ``MASTER_ADDR=127.0.0.1``, a shared
``MASTER_PORT``, ``WORLD_SIZE=2``, and ``Trainer(devices=1, num_nodes=2, strategy="ddp")``. Each process then:

* trains a tiny backbone (one linear layer) and A1's ``ShardedClassifier`` (ArcFace, model parallel), the classifier
  excluded from DDP (:func:`facetrain.classifier.ddp.exclude_from_ddp` in ``configure_model``), counting the bytes DDP
  all-reduces per step (:class:`~facetrain.classifier.ddp.AllReduceBytesCallback`);
* wraps a fresh copy of the same module in plain ``DistributedDataParallel`` *without* the exclusion and counts one
  step's bytes (the comparison run);
* saves a checkpoint through ``Trainer.save_checkpoint`` (every rank runs ``on_save_checkpoint``, rank 0 writes).

The test then checks the ranks, the bytes (backbone only vs backbone + classifier block), and resumes the 2-process
checkpoint in one process through ``Trainer.fit(ckpt_path=...)``: the full class matrix and momentum come back.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from facetrain.classifier import ShardedClassifier
from facetrain.classifier.checkpoint import load_sharded_classifier, save_sharded_classifier
from facetrain.classifier.ddp import AllReduceBytesCallback, count_allreduce_bytes, exclude_from_ddp, shared_buffers
from tests.faults import free_port

C, D_IN, D, B, STEPS = 8, 6, 4, 4, 3  # 8 classes: equal blocks, so DDP also accepts the classifier unexcluded
ROOT = Path(__file__).resolve().parents[2]


class TinyModule(pl.LightningModule):
    """A linear "backbone" and a model-parallel ArcFace classifier, wired as the training module should be."""

    def __init__(self, exclude: bool = True) -> None:
        super().__init__()
        self.exclude = exclude
        self.backbone = nn.Linear(D_IN, D)
        from facetrain.losses import ArcFaceHead

        self.head = ShardedClassifier(functools.partial(ArcFaceHead, scale=8.0), D, C, sample_rate=1.0, seed=1)
        self.resumed: dict[str, torch.Tensor] = {}

    def configure_model(self) -> None:
        # The process group exists now and DDP has not wrapped the module yet.
        self.head.configure_shards()
        if self.exclude:
            exclude_from_ddp(self, self.head)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x), y).loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(*batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(2 * B * STEPS, D_IN, generator=g), torch.randint(0, C, (2 * B * STEPS,)))
        return DataLoader(data, batch_size=B, drop_last=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_sharded_classifier(self.head, checkpoint, "head.", self.trainer.optimizers)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        load_sharded_classifier(self.head, checkpoint, "head.")

    def on_train_start(self) -> None:  # after a resume restored the weights and the optimizer
        momentum = self.trainer.optimizers[0].state.get(self.head.weight, {}).get("momentum_buffer")
        self.resumed = {"weight": self.head.weight.detach().clone()}
        if momentum is not None:  # a clone: the live buffer moves on with the next step
            self.resumed["momentum"] = momentum.clone()


def _trainer(**kwargs: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "max_steps": STEPS,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**settings, **kwargs})


def _unexcluded_bytes() -> int:
    """Bytes one step all-reduces when the classifier is left to DDP (the comparison run)."""
    model = TinyModule(exclude=False)
    model.configure_model()
    ddp = DistributedDataParallel(model)
    counter = count_allreduce_bytes(ddp)
    ddp(torch.randn(B, D_IN), torch.randint(0, C, (B,))).backward()
    return counter.total_bytes


def node_main(out: Path) -> None:
    """One node's process (``NODE_RANK`` from the environment)."""
    pl.seed_everything(0)
    counter = AllReduceBytesCallback()
    trainer = _trainer(devices=1, num_nodes=2, strategy="ddp", callbacks=[counter])
    model = TinyModule()
    trainer.fit(model)
    trainer.save_checkpoint(out / "two_nodes.ckpt")  # every rank: the hook gathers, rank 0 writes
    result = {
        "node_rank": trainer.node_rank,
        "global_rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "environment": type(trainer.strategy.cluster_environment).__name__,
        "bytes_per_step": counter.bytes_per_step,
        "unexcluded_bytes": _unexcluded_bytes(),
        "block_rows": [model.head.row_start, model.head.row_stop],
        "weight": model.head.weight.detach().tolist(),
        "momentum": trainer.optimizers[0].state[model.head.weight]["momentum_buffer"].tolist(),
    }
    (out / f"node{trainer.node_rank}.json").write_text(json.dumps(result))
    dist.barrier()
    # Shut gloo down before the interpreter exits: left to exit-time teardown, its threads can hit std::terminate
    # ("terminate called without an active exception", exit -6; seen once in a clean-clone CI run).
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.ddp
def test_two_nodes_through_lightning_exclude_the_classifier_and_resume_in_one_process(tmp_path: Path) -> None:
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "RANK", "GROUP_RANK"))}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(tmp_path)],
            env={**env, "NODE_RANK": str(node)},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for node, (p, output) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"node {node}:\n{output[-4000:]}"
    nodes = [json.loads((tmp_path / f"node{n}.json").read_text()) for n in (0, 1)]

    assert [(n["node_rank"], n["global_rank"], n["world_size"]) for n in nodes] == [(0, 0, 2), (1, 1, 2)]
    assert nodes[0]["environment"] == "LightningEnvironment"
    assert [n["block_rows"] for n in nodes] == [[0, 4], [4, 8]]
    backbone_bytes = (D_IN * D + D) * 4
    block_bytes = (C // 2) * D * 4
    for n in nodes:
        # Excluded: only the backbone's gradient travels, every step; left to DDP, the block would travel too.
        assert n["bytes_per_step"] == [backbone_bytes] * STEPS
        assert n["unexcluded_bytes"] == backbone_bytes + block_bytes

    # Resume the two-node checkpoint in one process: the full matrix and its momentum, in row order.
    model = TinyModule()
    _trainer(devices=1, max_steps=STEPS + 1).fit(model, ckpt_path=tmp_path / "two_nodes.ckpt")
    full_weight = torch.tensor(nodes[0]["weight"] + nodes[1]["weight"])
    full_momentum = torch.tensor(nodes[0]["momentum"] + nodes[1]["momentum"])
    torch.testing.assert_close(model.resumed["weight"], full_weight, rtol=0, atol=1e-7)
    torch.testing.assert_close(model.resumed["momentum"], full_momentum, rtol=0, atol=1e-7)


def test_exclude_from_ddp_names_the_classifier_relative_to_the_wrapped_module() -> None:
    """DDP reads the names relative to the module it wraps (the LightningModule); buffers broadcast by hand must skip
    them too (:func:`shared_buffers`)."""
    model = TinyModule()
    model.head.register_buffer("weight_momentum", torch.zeros_like(model.head.weight))  # Partial FC's
    model.backbone.register_buffer("running_mean", torch.zeros(D))
    names = exclude_from_ddp(model, model.head)
    assert names == ["head.weight", "head.weight_momentum"]
    assert model._ddp_params_and_buffers_to_ignore == names
    assert [name for name, _ in shared_buffers(model)] == ["backbone.running_mean"]
    with pytest.raises(ValueError, match="not a submodule"):
        exclude_from_ddp(model, nn.Linear(1, 1))


def test_slurm_launcher_runs_nodes_times_devices_in_lightnings_slurm_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hydra/launcher=slurm`` asks for trainer.num_nodes nodes x trainer.devices tasks, and the Trainer built from
    ``trainer=ddp`` in one of those srun tasks takes its rank from SLURM (no process is started here)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    GlobalHydra.instance().clear()
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", [f"paths.root_dir={tmp_path}", *overrides], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)

    # Task 6 of the 8 that srun starts for that job: node 1, local rank 2.
    slurm = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2"}
    slurm |= {"SLURM_PROCID": "6", "SLURM_LOCALID": "2", "SLURM_NODEID": "1", "SLURM_JOB_ID": "1"}
    slurm |= {"SLURM_NODELIST": "node[07-08]", "SLURM_JOB_NAME": "train"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    t = cfg.trainer
    trainer = pl.Trainer(accelerator="cpu", devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, logger=False)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (6, 2, 1, 8)
    assert trainer.strategy.cluster_environment.main_address == "node07"


if __name__ == "__main__":
    node_main(Path(sys.argv[1]))
