"""FaceRecognitionModule: angle statistics of a batch (training/angles.py), the non-finite loss check and the RNG
states in its checkpoints (training/rng.py)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from facetrain.losses import ArcFaceHead
from facetrain.models.embedding import EmbeddingModel
from facetrain.models.module import FaceRecognitionModule
from facetrain.training.angles import angle_stats, target_and_nearest_cosines
from facetrain.training.checkpoint import SafeCheckpointIO
from facetrain.training.rng import RNG_KEY, rng_state, set_rng_state
from tests.conftest import bare_cpu_trainer

EMBED, CLASSES = 8, 4


def _cos(degrees: list[list[float]]) -> torch.Tensor:
    return torch.cos(torch.deg2rad(torch.tensor(degrees, dtype=torch.float64)))


class NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad * float("nan")


class NanAfter(nn.Module):
    """A linear backbone whose output turns NaN from the ``nan_from``-th training forward pass on (0-based).

    ``nan_at`` instead poisons only the listed passes; ``grad_nan_at`` keeps the output finite and poisons the gradient.
    """

    def __init__(
        self, nan_from: int | None = None, nan_at: tuple[int, ...] = (), grad_nan_at: tuple[int, ...] = ()
    ) -> None:
        super().__init__()
        self.embedding_size = EMBED
        self.fc = nn.Linear(EMBED, EMBED)
        self.nan_from, self.nan_at, self.grad_nan_at = nan_from, nan_at, grad_nan_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        if self.training:
            if (self.nan_from is not None and self.calls >= self.nan_from) or self.calls in self.nan_at:
                out = out * float("nan")
            if self.calls in self.grad_nan_at:
                out = NanGrad.apply(out)
            self.calls += 1
        return out


class RecordOutputs(pl.Callback):
    """Keeps what ``training_step`` handed to ``on_train_batch_end``."""

    def __init__(self) -> None:
        self.outputs: list[object] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.outputs.append(outputs)


def _fit(module: FaceRecognitionModule, max_steps: int, **trainer_kwargs: object) -> pl.Trainer:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, EMBED, generator=gen), torch.randint(0, CLASSES, (32,), generator=gen))
    trainer = bare_cpu_trainer(
        max_steps=max_steps,
        **trainer_kwargs,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    return trainer


def _module(
    nan_from: int | None = None,
    nan_check: bool = True,
    skips: int = 0,
    fused: bool = False,
    **backbone: tuple[int, ...],
) -> FaceRecognitionModule:
    """``fused=True``: the guard skips bad steps on the device (read back later); False: it reads each step's flag."""
    return FaceRecognitionModule(
        backbone=NanAfter(nan_from, **backbone),
        head=lambda **kw: ArcFaceHead(**kw, scale=16.0, nan_check=nan_check),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, fused=fused),
        num_classes=CLASSES,
        max_nonfinite_skips=skips,
    )


def test_target_and_nearest_on_hand_made_cosines() -> None:
    # Row 0: the target is the best class; row 1: the target is the last column; row 2: a non-target is closer.
    cos = _cos([[30, 60, 90], [120, 45, 10], [20, 70, 100]])
    labels = torch.tensor([0, 2, 1])
    cos_y, cos_n = target_and_nearest_cosines(cos, labels)
    np.testing.assert_allclose(torch.rad2deg(torch.acos(cos_y)), [30, 10, 70], atol=1e-9)
    np.testing.assert_allclose(torch.rad2deg(torch.acos(cos_n)), [60, 45, 20], atol=1e-9)

    stats = angle_stats(cos_y, cos_n)
    assert float(stats["theta_target"]) == pytest.approx(np.mean([30, 10, 70]), abs=1e-3)
    assert float(stats["theta_target_std"]) == pytest.approx(np.std([30, 10, 70]), abs=1e-3)
    assert float(stats["theta_nearest"]) == pytest.approx(np.mean([60, 45, 20]), abs=1e-3)
    assert float(stats["theta_nearest_std"]) == pytest.approx(np.std([60, 45, 20]), abs=1e-3)


def test_nearest_handles_a_tie_with_the_target_and_clamps() -> None:
    cos = torch.tensor([[0.5, 0.5, 0.1], [1.0000002, -0.3, -1.0000002]])
    cos_y, cos_n = target_and_nearest_cosines(cos, torch.tensor([1, 0]))
    assert cos_y.tolist() == pytest.approx([0.5, 1.0])
    assert cos_n.tolist() == pytest.approx([0.5, -0.3])
    stats = angle_stats(cos_y[:1], cos_n[:1])  # a batch of one: the population std is 0, not NaN
    assert float(stats["theta_target_std"]) == 0.0
    assert float(stats["theta_target"]) == pytest.approx(60.0, abs=1e-4)


def test_training_logs_angle_statistics_and_returns_detached_cosines() -> None:
    module, record = _module(), RecordOutputs()
    trainer = _fit(module, max_steps=2, log_every_n_steps=1, callbacks=[record])
    metrics = trainer.callback_metrics
    for key in ["train/theta_target", "train/theta_target_std", "train/theta_nearest", "train/theta_nearest_std"]:
        assert key in metrics, f"{key} not logged: {sorted(metrics)}"
        assert 0.0 <= float(metrics[key]) <= 180.0
    # Nearly random weights: both angles sit near 90 degrees, and the nearest of 3 non-targets is the closer one.
    assert float(metrics["train/theta_nearest"]) < 90.0 + 1e-3

    assert len(record.outputs) == 2
    out = record.outputs[-1]
    assert isinstance(out, dict) and {"loss", "cos_target", "cos_nearest"} <= set(out)
    assert not out["cos_target"].requires_grad and not out["cos_nearest"].requires_grad
    assert out["cos_target"].shape == out["cos_nearest"].shape == (4,)
    assert bool((out["cos_nearest"] >= -1).all() and (out["cos_target"] <= 1).all())


FUSED = pytest.mark.parametrize("fused", [False, True], ids=["host-check", "device-skip"])


@FUSED
def test_nan_loss_raises_naming_the_step(fused: bool) -> None:
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at global step 2\b"):
        _fit(_module(nan_from=2, fused=fused), max_steps=5)


def test_nan_check_can_be_switched_off() -> None:
    record = RecordOutputs()
    _fit(_module(nan_from=1, nan_check=False), max_steps=2, callbacks=[record])
    assert math.isnan(float(record.outputs[-1]["loss"]))


@FUSED
def test_nan_gradient_raises_naming_the_step_before_the_update(fused: bool) -> None:
    module = _module(grad_nan_at=(3,), fused=fused)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at global step 3 \(epoch 0, batch 3\)"):
        _fit(module, max_steps=6)
    assert all(bool(p.isfinite().all()) for p in module.parameters())  # the bad gradient never reached the weights


@FUSED
def test_skip_mode_skips_a_bounded_number_of_batches(fused: bool) -> None:
    module = _module(skips=2, nan_at=(1,), grad_nan_at=(3,), fused=fused)
    before: dict[str, torch.Tensor] = {}

    class Snapshot(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if batch_idx in (1, 3):
                before[str(batch_idx)] = pl_module.backbone.fc.weight.detach().clone()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if batch_idx in (1, 3):  # a skipped batch leaves the weights exactly as they were
                assert torch.equal(before[str(batch_idx)], pl_module.backbone.fc.weight)

    trainer = _fit(module, max_steps=6, callbacks=[Snapshot()])
    assert int(module.nonfinite_skipped) == 2
    assert trainer.global_step >= 5
    assert all(bool(p.isfinite().all()) for p in module.parameters())
    # The bound is a bound: a third bad batch stops the run.
    with pytest.raises(FloatingPointError, match="after skipping 2 batches"):
        _fit(_module(skips=2, nan_at=(1, 2, 4), fused=fused), max_steps=8)


def test_non_finite_weights_are_never_checkpointed() -> None:
    module = _module()
    module.on_save_checkpoint({})  # finite: fine
    with torch.no_grad():
        module.backbone.fc.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"refusing to save a checkpoint .*backbone\.fc\.weight"):
        module.on_save_checkpoint({})


def test_max_nonfinite_skips_is_validated() -> None:
    with pytest.raises(ValueError, match="model.max_nonfinite_skips must be an integer >= 0, got -1"):
        _module(skips=-1)


class Snapshots(pl.Callback):
    """Weights and SGD momentum before and after every batch."""

    def __init__(self) -> None:
        self.before: list[list[torch.Tensor]] = []
        self.after: list[list[torch.Tensor]] = []

    @staticmethod
    def _state(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[torch.Tensor]:
        optimizer = trainer.optimizers[0]
        momenta = [optimizer.state[p]["momentum_buffer"] for p in pl_module.parameters() if p in optimizer.state]
        return [t.detach().clone() for t in [*pl_module.parameters(), *momenta]]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.before.append(self._state(trainer, pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.after.append(self._state(trainer, pl_module))


def test_device_skip_leaves_weights_and_momentum_untouched_and_stops_at_the_next_logging_step() -> None:
    # Gradient NaN at step 2 only; log_every_n_steps=4, so the host reads the flag at step 3 (the first logging step).
    module, snaps = _module(grad_nan_at=(2,), fused=True), Snapshots()
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at global step 2 \(epoch 0, batch 2\)"):
        _fit(module, max_steps=8, log_every_n_steps=4, callbacks=[snaps])
    assert len(snaps.before) == 4  # steps 0-3 ran: the flag stayed on the device until the logging step 3
    for before, after in zip(snaps.before[2], snaps.after[2]):
        assert torch.equal(before, after)  # step 2 changed neither a weight nor a momentum buffer
    assert any(not torch.equal(b, a) for b, a in zip(snaps.before[1], snaps.after[1]))  # the others did update
    assert all(bool(p.isfinite().all()) for p in module.parameters())


def test_a_pending_non_finite_step_blocks_the_checkpoint() -> None:
    module = _module(grad_nan_at=(2,), fused=True)

    class SaveAtStep3(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if batch_idx == 3:  # after the bad step 2, before any logging step read its flag
                pl_module.on_save_checkpoint({})

    with pytest.raises(FloatingPointError, match=r"non-finite gradient at global step 2\b"):
        _fit(module, max_steps=8, log_every_n_steps=50, callbacks=[SaveAtStep3()])


def test_first_update_checks_on_the_host_so_fused_sgd_never_keeps_uninitialised_momentum() -> None:
    # A fused SGD step skipped through found_inf before any momentum exists would keep torch.empty memory as the
    # momentum (torch allocates it, then the kernel returns early). The guard therefore skips that step on the host,
    # and the run equals the host-checked (non-fused) one.
    torch.manual_seed(0)
    fused = _module(skips=1, nan_at=(0,), fused=True)
    torch.manual_seed(0)
    plain = _module(skips=1, nan_at=(0,), fused=False)
    _fit(fused, max_steps=4)
    _fit(plain, max_steps=4)
    assert int(fused.nonfinite_skipped) == int(plain.nonfinite_skipped) == 1
    for a, b in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# --- global RNG state in checkpoints (bit-exact resume) ----------------------------------------------------------


def _draws() -> tuple[list[float], list[float], list[float]]:
    """A few draws from each global generator a training step may use (dropout, augmentation, user code)."""
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def test_rng_state_round_trip_replays_torch_numpy_and_python_draws(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = rng_state()
    first = _draws()
    set_rng_state(state)
    assert _draws() == first
    # Through a checkpoint file, loaded weights-only as every resume does: still the same draws.
    SafeCheckpointIO().save_checkpoint({RNG_KEY: state}, tmp_path / "rng.ckpt")
    _draws()  # move every generator on, so that only a real restore gives ``first`` again
    set_rng_state(SafeCheckpointIO().load_checkpoint(tmp_path / "rng.ckpt")[RNG_KEY])
    assert _draws() == first


def test_checkpoint_hooks_restore_the_global_rng_on_load() -> None:
    module = _module()
    checkpoint: dict[str, object] = {}
    module.on_save_checkpoint(checkpoint)
    after_save = _draws()  # what the uninterrupted run draws next (dropout masks, ...)
    _draws()  # the killed run went on drawing; a resumed process starts from an unrelated state
    module.on_load_checkpoint(checkpoint)
    assert _draws() == after_save


def test_training_and_evaluate_py_embed_through_one_path() -> None:
    """The training module (its steps and the evaluation callbacks) and ``EmbeddingModel`` (what evaluate.py rebuilds
    from a checkpoint, without the head) give the same raw embeddings of the same backbone."""
    module = _module().eval()
    images = torch.randn(3, EMBED, generator=torch.Generator().manual_seed(0))
    standalone = EmbeddingModel(module.backbone).eval()
    torch.testing.assert_close(standalone.embed(images), module.embed(images))
    torch.testing.assert_close(module(images), torch.nn.functional.normalize(standalone.embed(images), dim=1))
    assert standalone.device == torch.device("cpu")
