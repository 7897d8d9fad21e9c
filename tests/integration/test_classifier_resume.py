"""A sharded classifier's checkpoint saved by 2 gloo processes resumes with 1 and with 3 processes.

The 2-process run trains two classifiers for a few SGD-momentum steps: a model-parallel sub-centre ArcFace (K = 2 rows
per class; its momentum is the optimizer's ``momentum_buffer``) and an ArcFace Partial FC (its momentum is the
``weight_momentum`` buffer of its row update; its sampler a generator per rank). It saves them through the hooks as
Lightning does (every rank calls ``save_sharded_classifier``, rank 0 writes the file). Each rank also writes its own
block, momentum and generator state to a side file, the reference the checkpoint is checked against (independently
of the gather code). The 1- and 3-process runs load the file through ``load_sharded_classifier`` +
``load_state_dict`` + ``Optimizer.load_state_dict`` and write what each rank then holds; joined in rank order it must
be the 2-process run's full matrix and momentum.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facetrain.classifier import ShardedClassifier
from facetrain.classifier.checkpoint import CLASSIFIER_KEY, load_sharded_classifier, save_sharded_classifier
from facetrain.losses import ArcFaceHead, SubCenterArcFaceHead

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

C, D, B, STEPS = 7, 8, 4, 3  # 7 classes: blocks of 4/3 (2 ranks) and 3/2/2 (3 ranks)
CLASSIFIERS = {  # name: (head, sample_rate)
    "model_parallel": (functools.partial(SubCenterArcFaceHead, k=2), 1.0),
    "partial_fc": (ArcFaceHead, 0.5),
}


def _build(name: str) -> tuple[ShardedClassifier, torch.optim.Optimizer]:
    head, sample_rate = CLASSIFIERS[name]
    classifier = ShardedClassifier(head, D, C, sample_rate=sample_rate, seed=5)
    classifier.configure_shards()
    return classifier, torch.optim.SGD([classifier.weight], lr=0.1, momentum=0.9)


def _momentum(head: ShardedClassifier, opt: torch.optim.Optimizer) -> torch.Tensor:
    if head.sample_rate < 1:
        return head.weight_momentum.clone()
    return opt.state[head.weight]["momentum_buffer"].clone()


def _train(head: ShardedClassifier, opt: torch.optim.Optimizer, rank: int, world: int) -> None:
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        emb, labels = torch.randn(B * world, D, generator=g), torch.randint(0, C, (B * world,), generator=g)
        opt.zero_grad()
        head(emb[rank * B : (rank + 1) * B], labels[rank * B : (rank + 1) * B]).loss.backward()
        head.step_rows(opt)  # Partial FC's sampled rows (no-op for model parallel), as the training module does
        opt.step()


def _worker(rank: int, world: int, port: int, out: str, phase: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name in CLASSIFIERS:
            head, opt = _build(name)
            if phase == "save":
                _train(head, opt, rank, world)
                # What Lightning's dump_checkpoint hands on_save_checkpoint (the keys the hooks read).
                state = {"head." + k: v for k, v in head.state_dict().items()}
                ckpt = {"state_dict": state, "optimizer_states": [opt.state_dict()], "global_step": STEPS}
                save_sharded_classifier(head, ckpt, "head.", [opt])
                if rank == 0:  # Lightning's DDP strategy writes rank 0's checkpoint only
                    torch.save(ckpt, Path(out, f"{name}.ckpt"))
            else:
                ckpt = torch.load(Path(out, f"{name}.ckpt"), weights_only=True)
                load_sharded_classifier(head, ckpt, "head.")
                head.load_state_dict({k.removeprefix("head."): v for k, v in ckpt["state_dict"].items()})
                opt.load_state_dict(ckpt["optimizer_states"][0])
            local = {"weight": head.weight.detach().clone(), "momentum": _momentum(head, opt)}
            torch.save(local | {"generator": head.generator.get_state()}, Path(out, f"{name}_{phase}{world}_{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _joined(out: Path, name: str, world: int) -> tuple[dict[str, torch.Tensor], list[dict]]:
    parts = [torch.load(out / f"{name}{world}_{r}.pt", weights_only=True) for r in range(world)]
    return {key: torch.cat([p[key] for p in parts]) for key in ("weight", "momentum")}, parts


def test_saved_with_2_processes_resumes_with_1_and_3(tmp_path: Path) -> None:
    from tests.faults import free_port  # here, not at the top: spawned workers import this module

    # forkserver with torch preloaded: each child is forked from a clean server process, so it needs no second import
    # of torch (seconds each on a loaded 2-core machine) yet inherits none of this process's threads. A plain fork
    # hung here when an earlier test in the same pytest process had trained with torch's intra-op thread pool.
    mp.set_forkserver_preload(["torch", "facetrain.classifier"])
    for phase, world in (("save", 2), ("load", 1), ("load", 3)):
        args = (world, free_port(), str(tmp_path), phase)
        mp.start_processes(_worker, args, nprocs=world, start_method="forkserver")
    for name in CLASSIFIERS:
        saved, saved_parts = _joined(tmp_path, f"{name}_save", 2)
        ckpt = torch.load(tmp_path / f"{name}.ckpt", weights_only=True)
        # The file holds the full (C·K)×D matrix and momentum in row order, as a replicated head's checkpoint would.
        state = ckpt["state_dict"]
        assert state["head.weight"].shape[0] == C * ckpt[CLASSIFIER_KEY]["rows_per_class"], name
        assert torch.equal(state["head.weight"], saved["weight"]), name
        if "head.weight_momentum" in state:  # Partial FC
            momentum = state["head.weight_momentum"]
        else:
            momentum = ckpt["optimizer_states"][0]["state"][0]["momentum_buffer"]
        assert torch.equal(momentum, saved["momentum"]), name
        generators = ckpt[CLASSIFIER_KEY]["generator_states"]
        assert all(torch.equal(g, p["generator"]) for g, p in zip(generators, saved_parts, strict=True)), name
        for world in (1, 3):
            resumed, parts = _joined(tmp_path, f"{name}_load", world)
            assert torch.equal(resumed["weight"], saved["weight"]), (name, world)
            assert torch.equal(resumed["momentum"], saved["momentum"]), (name, world)
            # Another world size: each rank's generator is re-seeded (distinct per rank), not rank 0's saved stream.
            assert not any(torch.equal(p["generator"], saved_parts[0]["generator"]) for p in parts), (name, world)
            assert len({bytes(p["generator"].numpy()) for p in parts}) == world, (name, world)
