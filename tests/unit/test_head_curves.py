"""HeadCurves: the target-logit figure of the head and the bounded per-epoch angle samples."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from facetrain.callbacks.head_curves import BoundedSample, HeadCurves, target_logit_curve
from facetrain.losses import AdaptiveC, ArcFaceHead, CamSoftmaxHead, FixedC, LinearC, SoftmaxHead, SphereFaceHead
from facetrain.models.module import FaceRecognitionModule


class FakeWriter:
    """Records what a TensorBoard SummaryWriter would be asked to write."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}
        self.histograms: dict[str, torch.Tensor] = {}

    def add_figure(self, tag: str, figure: Any, global_step: int = 0, close: bool = True) -> None:
        self.figures[tag] = figure

    def add_histogram(self, tag: str, values: torch.Tensor, global_step: int = 0, bins: str = "auto") -> None:
        self.histograms[tag] = values


def _trainer(tmp_path: Path, writer: FakeWriter, total_steps: float = 100) -> SimpleNamespace:
    logger = SimpleNamespace(experiment=writer)
    return SimpleNamespace(
        is_global_zero=True,
        loggers=[logger],
        default_root_dir=str(tmp_path),
        global_step=0,
        estimated_stepping_batches=total_steps,
    )


def test_arcface_curve_png_and_figure(tmp_path: Path) -> None:
    head = ArcFaceHead(embedding_size=8, num_classes=3, scale=64.0, margin=0.5)
    writer, callback = FakeWriter(), HeadCurves(num_points=361)  # 0.5 degree steps
    callback.on_train_start(_trainer(tmp_path, writer), SimpleNamespace(head=head))

    png = tmp_path / "target_logit.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert callback.figure_path == png
    fig = writer.figures["head/target_logit"]
    plain, target = fig.axes[0].lines  # the reference is drawn first
    thetas = np.asarray(target.get_xdata())
    # 60 degrees: s·cos(θ + m); 170 degrees lies beyond π − m, where the InsightFace fallback s·(cos θ − m·sin m) holds.
    at60, at170 = int(np.argmin(abs(thetas - 60))), int(np.argmin(abs(thetas - 170)))
    assert thetas[at60] == 60.0 and thetas[at170] == 170.0
    assert target.get_ydata()[at60] == pytest.approx(64 * math.cos(math.radians(60) + 0.5), abs=1e-3)
    assert target.get_ydata()[at170] == pytest.approx(64 * (math.cos(math.radians(170)) - 0.5 * math.sin(0.5)), 1e-4)
    assert plain.get_ydata()[at60] == pytest.approx(32.0, abs=1e-9)
    assert (np.diff(target.get_ydata()) <= 1e-9).all()  # monotone non-increasing in θ


def test_dirpath_overrides_the_run_dir_and_softmax_has_no_curve(tmp_path: Path) -> None:
    assert target_logit_curve(SoftmaxHead(8, 3), np.array([0.0, 90.0])) is None
    writer = FakeWriter()
    HeadCurves().on_train_start(_trainer(tmp_path, writer), SimpleNamespace(head=SoftmaxHead(8, 3)))
    assert not writer.figures and not (tmp_path / "target_logit.png").exists()

    out = tmp_path / "elsewhere"
    head = ArcFaceHead(8, 3)
    HeadCurves(dirpath=str(out)).on_train_start(_trainer(tmp_path, writer), SimpleNamespace(head=head))
    assert (out / "target_logit.png").is_file()


def test_bounded_sample_is_bounded_uniform_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    sample = BoundedSample(capacity=500, seed=1)
    for start in range(0, 10_000, 256):
        sample.add(torch.arange(start, min(start + 256, 10_000), dtype=torch.float32))
    assert len(sample) == 500 and sample.seen == 10_000
    values = sample.values()
    assert len(torch.unique(values)) == 500
    # A uniform sample of 0..9999: mean 5000, standard error 2887/sqrt(500) ≈ 130.
    assert abs(float(values.mean()) - 5000) < 600
    assert float((values >= 5000).float().mean()) == pytest.approx(0.5, abs=0.1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sample.reset()
    assert len(sample) == 0 and sample.seen == 0


def test_epoch_histograms_use_a_bounded_sample(tmp_path: Path) -> None:
    writer, callback = FakeWriter(), HeadCurves(max_samples=100)
    trainer, module = _trainer(tmp_path, writer), SimpleNamespace()
    callback.on_train_epoch_start(trainer, module)
    for i in range(10):
        outputs = {"loss": torch.tensor(1.0), "cos_target": torch.full((64,), 0.5), "cos_nearest": torch.zeros(64)}
        callback.on_train_batch_end(trainer, module, outputs, None, i)
    callback.on_train_epoch_end(trainer, module)
    target, nearest = writer.histograms["head/theta_target"], writer.histograms["head/theta_nearest"]
    assert target.shape == nearest.shape == (100,)
    np.testing.assert_allclose(target, 60.0, atol=1e-4)  # degrees
    np.testing.assert_allclose(nearest, 90.0, atol=1e-4)


def test_in_a_real_fit_tensorboard_gets_the_figure_and_histograms(tmp_path: Path) -> None:
    backbone = nn.Linear(8, 8)
    backbone.embedding_size = 8
    module = FaceRecognitionModule(
        backbone=backbone,
        head=lambda **kw: ArcFaceHead(**kw),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        num_classes=4,
    )
    data = TensorDataset(torch.randn(16, 8), torch.randint(0, 4, (16,)))
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        default_root_dir=str(tmp_path),
        logger=TensorBoardLogger(str(tmp_path), name="tb", version=""),
        callbacks=[HeadCurves(max_samples=10)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert (tmp_path / "target_logit.png").is_file()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    assert "head/target_logit" in events.Tags()["images"]
    assert {"head/theta_target", "head/theta_nearest"} <= set(events.Tags()["histograms"])
    assert len(events.Histograms("head/theta_target")) == 2  # one per epoch
    assert events.Histograms("head/theta_target")[0].histogram_value.num == 10  # the bounded sample


def test_cam_softmax_figure_shows_the_start_and_the_end_of_the_c_schedule(tmp_path: Path) -> None:
    # c from π/2 (the start: exactly s·cos θ, hidden under the reference) to π/4, reached halfway through 100 steps.
    head = CamSoftmaxHead(8, 3, scale=20.0, c_policy=LinearC(run_fraction=0.5))
    writer = FakeWriter()
    HeadCurves(num_points=181).on_train_start(_trainer(tmp_path, writer, total_steps=100), SimpleNamespace(head=head))
    plain, start, end = writer.figures["head/target_logit"].axes[0].lines
    assert end.get_label() == "end of run (step 100)"
    thetas = np.asarray(start.get_xdata())
    np.testing.assert_allclose(start.get_ydata(), plain.get_ydata(), atol=1e-9)
    # At the end c = π/4: f(cos c) = 0 at θ = 45°, f(±1) = ±1 at 0° and 180°, below s·cos θ in between.
    assert end.get_ydata()[int(np.argmin(abs(thetas - 45)))] == pytest.approx(0.0, abs=1e-9)
    assert end.get_ydata()[0] == pytest.approx(20.0) and end.get_ydata()[-1] == pytest.approx(-20.0)
    assert (np.asarray(end.get_ydata())[1:-1] < np.asarray(start.get_ydata())[1:-1]).all()
    assert float(head.c) == math.pi / 2 and int(head.step) == 0  # the figure leaves the training head alone


def test_schedule_heads_get_an_end_curve_and_the_others_do_not(tmp_path: Path) -> None:
    writer = FakeWriter()
    HeadCurves(num_points=91).on_train_start(_trainer(tmp_path, writer), SimpleNamespace(head=SphereFaceHead(8, 3)))
    assert len(writer.figures["head/target_logit"].axes[0].lines) == 3  # λ from 1000 towards its floor 5
    writer = FakeWriter()
    head = CamSoftmaxHead(8, 3, c_policy=FixedC(1.0))
    HeadCurves(num_points=91).on_train_start(_trainer(tmp_path, writer), SimpleNamespace(head=head))
    assert len(writer.figures["head/target_logit"].axes[0].lines) == 2  # c does not move: one curve
    # The official per-step schedule: c = π/2 − 1e-4·1000 after 1000 steps; data-driven rules have no known end.
    assert float(CamSoftmaxHead(8, 3).at_step(1000, 1000).c) == pytest.approx(math.pi / 2 - 0.1)
    assert CamSoftmaxHead(8, 3, c_policy=AdaptiveC()).at_step(1000, 1000) is None
    assert ArcFaceHead(8, 3).at_step(1000, 1000) is None
