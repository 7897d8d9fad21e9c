"""The LightningModule that joins a backbone and a margin head."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from facetrain.losses.base import FaceHead, HeadOutput

HeadFactory = Callable[..., nn.Module]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


class FaceRecognitionModule(pl.LightningModule):
    """Backbone → embedding → margin head → cross-entropy, with per-step LR scheduling.

    The head, optimizer and scheduler arrive as factories (Hydra ``_partial_``) because they need values known only
    at run time: the class count read from the data, the parameters, and the number of optimizer steps.

    Args:
        backbone: Maps images to un-normalised embeddings and exposes ``embedding_size``.
        head: ``head(embedding_size=..., num_classes=...)`` builds the margin head (it owns the class weights).
        optimizer: ``optimizer(params)`` builds the optimizer.
        num_classes: Training identities.
        scheduler: ``scheduler(optimizer, total_steps=...)`` builds a per-step LR schedule; None for a constant LR.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: HeadFactory,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head: FaceHead = head(embedding_size=backbone.embedding_size, num_classes=num_classes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_classes = num_classes
        # Set by the train task; stored in every checkpoint as plain data so a run can be rebuilt from it.
        self.run_config: dict[str, Any] | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised face embeddings (inference)."""
        return F.normalize(self.backbone(images), dim=1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Raw embeddings for evaluation; callers normalise (after optional flip fusion)."""
        return self.backbone(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        out: HeadOutput = self.head(self.backbone(images), labels)
        self._log_step(out, labels)
        return out.loss

    @torch.no_grad()
    def _log_step(self, out: HeadOutput, labels: torch.Tensor) -> None:
        # Accuracy and angles come from the plain cosines, so heads with different margins stay comparable.
        cos_y = out.cosine.gather(1, labels[:, None]).squeeze(1).clamp(-1, 1)
        values = {
            "train/loss": out.loss.detach(),
            "train/acc": (out.cosine.argmax(dim=1) == labels).float().mean(),
            "train/theta_target": torch.rad2deg(torch.acos(cos_y)).mean(),
            "train/lr": torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"]),
        }
        values.update({f"train/{k}": v.detach().float() for k, v in self.head.log_values().items()})
        self.log_dict(values, prog_bar=False, batch_size=labels.shape[0])
        self.log("loss", values["train/loss"], prog_bar=True, logger=False, batch_size=labels.shape[0])

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Per-step head schedules (cam-softmax's c, SphereFace's lambda) advance once per optimizer step.
        self.head.on_optimizer_step()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["facetrain_config"] = self.run_config
