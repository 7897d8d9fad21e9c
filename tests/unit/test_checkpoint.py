"""Checkpoint files: atomic writes, weights-only loads, ``ckpt_path=last`` resolution past truncated files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from facetrain.callbacks.preemption import Preemption
from facetrain.training.checkpoint import (
    SafeCheckpointIO,
    UnsafeCheckpointError,
    find_last_checkpoint,
    safe_load,
)
from facetrain.utils.instantiate import instantiate
from tests.conftest import Composer


class Smuggler:
    """An object whose unpickling would run a command (what a malicious checkpoint carries)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _state(step: int) -> dict[str, object]:
    return {"state_dict": {"w": torch.full((3,), float(step))}, "global_step": step, "facetrain_config": {"a": [1]}}


def test_round_trip_is_plain_data(tmp_path: Path) -> None:
    io = SafeCheckpointIO()
    io.save_checkpoint(_state(3), tmp_path / "c.ckpt")
    loaded = io.load_checkpoint(tmp_path / "c.ckpt")
    assert loaded["global_step"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.full((3,), 3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]  # no temporary file left behind


def test_crash_mid_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = SafeCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(_state(1), path)

    def dying_save(obj: object, f) -> None:  # noqa: ANN001
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint(_state(2), path)
    monkeypatch.undo()
    assert safe_load(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class PreemptedAt(pl.LightningModule):
    """A linear model whose training raises Lightning's ``SIGTERMException`` at ``step``, as a SIGTERM there would."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], idx: int) -> torch.Tensor:
        if self.global_step == self.step:
            raise SIGTERMException
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _preempt(compose_cfg: Composer, step: int) -> Path:
    """Fits :class:`PreemptedAt` with the shipped trainer and preemption configs; returns the checkpoint directory."""
    cfg = compose_cfg("trainer.accelerator=cpu", "callbacks=preemption")
    preemption = instantiate(cfg.callbacks.preemption)
    assert isinstance(preemption, Preemption)
    trainer = instantiate(
        cfg.trainer,
        callbacks=[preemption],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=10,
    )
    data = DataLoader(TensorDataset(torch.ones(16, 2)), batch_size=2)
    with pytest.raises(SIGTERMException):
        trainer.fit(PreemptedAt(step), data)
    return Path(cfg.callbacks.preemption.dirpath)


def test_preemption_checkpoint_crashing_mid_write_keeps_the_previous_one(
    compose_cfg: Composer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second SIGTERM (or a full disk) while preempted.ckpt is written must not leave half a file where the last
    # good preemption checkpoint was: ckpt_path=last would then have nothing to resume from.
    directory = _preempt(compose_cfg, step=2)
    assert safe_load(directory / "preempted.ckpt")["global_step"] == 2

    def dying_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        # Half a checkpoint, then the crash; whether the writer passed a file or a path.
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        else:
            f.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        _preempt(compose_cfg, step=3)
    monkeypatch.undo()
    assert safe_load(directory / "preempted.ckpt")["global_step"] == 2
    assert [p.name for p in directory.iterdir()] == ["preempted.ckpt"]  # no temporary file left behind


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Smuggler(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*evil\.ckpt.*not tensors or plain data"):
        SafeCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_missing_files_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "t.ckpt"
    torch.save(_state(1), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"t\.ckpt is truncated or not a torch checkpoint"):
        safe_load(path)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        safe_load(tmp_path / "nope.ckpt")


def _run(root: Path, name: str, overrides: list[str], steps: list[int]) -> list[Path]:
    run = root / "runs" / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    paths = []
    for step in steps:
        path = run / "checkpoints" / f"step{step:07d}.ckpt"
        SafeCheckpointIO().save_checkpoint(_state(step), path)
        time.sleep(0.01)  # distinct modification times
        paths.append(path)
    return paths


def test_last_skips_a_truncated_newest_file_and_other_experiments(tmp_path: Path) -> None:
    mine = ["loss=arcface", "seed=1"]
    old = _run(tmp_path, "a", mine, [10, 20])
    _run(tmp_path, "b", ["loss=cosface", "seed=1"], [30])  # another experiment, newer
    newest = _run(tmp_path, "c", [*mine, "ckpt_path=last"], [40])[0]  # same experiment (ckpt_path is ignored)
    assert find_last_checkpoint(tmp_path, [*mine, "ckpt_path=last"]) == newest
    newest.write_bytes(newest.read_bytes()[:64])  # the process died while the disk was writing it
    assert find_last_checkpoint(tmp_path, list(reversed(mine))) == old[1]
    assert find_last_checkpoint(tmp_path, ["loss=softmax"]) is None
    assert find_last_checkpoint(tmp_path, mine, exclude=tmp_path / "runs" / "a") is None
