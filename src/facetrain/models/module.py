"""The LightningModule that joins a backbone and a margin head."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from facetrain.classifier import checkpoint as classifier_checkpoint
from facetrain.classifier.ddp import exclude_from_ddp
from facetrain.losses.base import FaceHead, HeadOutput
from facetrain.models.embedding import BackboneEmbedding
from facetrain.models.finetune import apply_finetuning
from facetrain.training.angles import angle_stats, target_and_nearest_cosines
from facetrain.training.nonfinite import NonfiniteEvents, nonfinite_flag, skips_on_device
from facetrain.training.rng import RNG_KEY, gather_rng_states, restore_rng_state
from facetrain.utils.rules import Constraint, Interval, OneOf
from facetrain.utils.safe_load import CONFIG_KEY

HeadFactory = Callable[..., nn.Module]
ClassifierFactory = Callable[..., FaceHead]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]

log = logging.getLogger(__name__)


class FaceRecognitionModule(BackboneEmbedding, pl.LightningModule):
    """Backbone → embedding → margin head → cross-entropy, with per-step LR scheduling.

    The head, optimizer and scheduler arrive as factories (Hydra ``_partial_``) because they need values known only
    at run time: the class count read from the data, the parameters, and the number of optimizer steps.

    Args:
        backbone: Maps images to un-normalised embeddings and exposes ``embedding_size``.
        head: ``head(embedding_size=..., num_classes=...)`` builds the margin head (it owns the class weights).
        optimizer: ``optimizer(params)`` builds the optimizer.
        num_classes: Training identities.
        classifier: ``classifier(head=head, embedding_size=..., num_classes=...)`` lays the head's class centres out
            over the processes (``classifier/``: replicated, model_parallel, partial_fc); None builds the head itself,
            as ``classifier=replicated`` does.
        scheduler: ``scheduler(optimizer, total_steps=...)`` builds a per-step LR schedule; None for a constant LR.
        max_nonfinite_skips: What to do when the head's ``nan_check`` (``loss.nan_check``, on by default) finds a
            NaN/Inf loss or gradient: 0 stops with ``FloatingPointError`` naming the global step; N > 0 skips up to N
            such batches over the whole run (no weight update; the LR and head schedules still advance), for fp16
            users whose loss scaler occasionally overflows, and stops at the (N+1)-th. With a fused optimizer the
            flag stays on the device and is read at the next logging step (:meth:`on_before_optimizer_step`); under
            DDP it is the maximum over the ranks, so every rank skips the same steps.
        init_from: Fine-tune from this checkpoint or ``.safetensors`` file: backbone strictly, classifier too when
            its shape (class count) matches (:mod:`facetrain.models.finetune`).
        init_classifier: Also copy the classifier when it fits; false starts it fresh.
        freeze_backbone: Train the head only.
        trainable_stages: Freeze the trunk except its last N stages (timm ``feature_info``); the neck trains.
        freeze_bn_stats: BatchNorm layers of frozen parts keep their running statistics.

        channels_last: Keep the backbone's weights and the input batches in channels-last (NHWC) memory format
            (``trainer=gpu`` turns it on): the fast layout for convolutions in bf16/fp16 on NVIDIA GPUs.
        compile: Compile the backbone with ``torch.compile`` (``nn.Module.compile``, in place) on its first call.

    Non-finite weights are never checkpointed: :meth:`on_save_checkpoint` refuses them, so the last good checkpoint
    survives a divergence.
    """

    #: Valid values, checked per config key before the data is read (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "max_nonfinite_skips": Interval(0, integer=True),
        "channels_last": OneOf((True, False)),
        "compile": OneOf((True, False)),
    }

    def __init__(
        self,
        backbone: nn.Module,
        head: HeadFactory,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        max_nonfinite_skips: int = 0,
        channels_last: bool = False,
        compile: bool = False,
        init_from: str | None = None,
        init_classifier: bool = True,
        freeze_backbone: bool = False,
        trainable_stages: int | None = None,
        freeze_bn_stats: bool = True,
        classifier: ClassifierFactory | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # NHWC activations let cuDNN use its tensor-core convolutions without layout transposes (bf16/fp16).
        self.channels_last = bool(channels_last)
        if self.channels_last:
            backbone.to(memory_format=torch.channels_last)
        if compile:  # in place: parameter names, state_dict keys and checkpoints stay those of the eager backbone
            backbone.compile()
        if classifier is None:
            self.head: FaceHead = head(embedding_size=backbone.embedding_size, num_classes=num_classes)
        else:
            self.head = classifier(head=head, embedding_size=backbone.embedding_size, num_classes=num_classes)
        # Fine-tuning (facetrain.models.finetune); the train task writes the record to <run dir>/init_from.json.
        self.init_record = apply_finetuning(
            backbone, self.head, init_from, init_classifier, freeze_backbone, trainable_stages, freeze_bn_stats
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_classes = num_classes
        if isinstance(max_nonfinite_skips, bool) or not isinstance(max_nonfinite_skips, int) or max_nonfinite_skips < 0:
            raise ValueError(f"model.max_nonfinite_skips must be an integer >= 0, got {max_nonfinite_skips!r}")
        self.max_nonfinite_skips = max_nonfinite_skips
        self._batch_idx = -1
        # The non-finite guard's device-side state (facetrain.training.nonfinite); transient, drained before saving.
        self._loss: torch.Tensor | None = None
        self._nonfinite_events = NonfiniteEvents()
        self._host_updates = 0
        self.progress_values: dict[str, float] = {}  # shown in the progress bar (ProgressBarValues)
        # A buffer so that a resumed run keeps counting towards the same bound.
        self.register_buffer("nonfinite_skipped", torch.zeros((), dtype=torch.long))
        # Set by the train task; stored in every checkpoint as plain data so a run can be rebuilt from it.
        self.run_config: dict[str, Any] | None = None

    def configure_model(self) -> None:
        """Runs once the trainer has set up the process group: a sharded classifier takes its block of classes."""
        if self.head.configure_shards():  # each rank's block is its own: DDP averages and broadcasts the backbone only
            exclude_from_ddp(self, self.head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised face embeddings (inference)."""
        return F.normalize(self.embed(images), dim=1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Loss of one batch; at logging steps also the metrics and the detached target / nearest cosines.

        Nothing here reads a device value on the host except at logging steps (``trainer.log_every_n_steps``): on a
        GPU every such read stalls the host until the device has drained its queue. The non-finite check therefore
        keeps its flag on the device (see :meth:`on_before_optimizer_step`).

        Returns:
            ``{"loss"}``, plus ``"cos_target"`` and ``"cos_nearest"`` at logging steps; Lightning optimises ``loss`` and
            hands the whole dict to ``Callback.on_train_batch_end`` (the angle histograms of
            ``facetrain.callbacks.head_curves`` sample the logging steps).
        """
        images, labels = batch
        self._batch_idx = batch_idx
        out: HeadOutput = self.head(self.embed(images), labels)
        if self.head.nan_check:
            self._loss = out.loss.detach()  # combined with the gradients' flag before the optimizer step
        if not self.is_logging_step():
            return {"loss": out.loss}
        self._raise_pending_nonfinite()
        with torch.no_grad():
            sharded = self.head.target_and_nearest()
            if sharded is None:  # the head's cosines hold every class
                cos_target, cos_nearest = target_and_nearest_cosines(out.cosine.detach(), labels)
                correct = out.cosine.argmax(dim=1) == labels
            else:  # a sharded classifier: its cosines hold one block; the nearest class is taken over all ranks
                cos_target, cos_nearest = sharded
                correct = cos_target > cos_nearest
        self._log_step(out, labels, correct, cos_target, cos_nearest)
        return {"loss": out.loss, "cos_target": cos_target, "cos_nearest": cos_nearest}

    def is_logging_step(self) -> bool:
        """Whether this training step logs (Lightning writes the logs of every ``trainer.log_every_n_steps``-th step).

        Outside a fit (a bare module) every step logs.
        """
        trainer = self._trainer
        if trainer is None:
            return True
        return (self.global_step + 1) % max(1, int(trainer.log_every_n_steps)) == 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Keeps a non-finite loss or gradient (checked after AMP unscaling) away from the weights and optimizer state.

        With a fused optimizer (``optimizer.fused=true``, the default configs) the check costs no host read: one
        device flag (loss or any gradient NaN/Inf, the maximum over DDP ranks) is handed to the fused kernel as
        ``found_inf``, which then leaves the weights and the optimizer state untouched, exactly as AMP's GradScaler
        skips an overflowing step. The flag is read on the host at the next logging step, epoch end or checkpoint,
        which stops the run naming the first bad step (or counts it against ``max_nonfinite_skips``). Other
        optimizers, and the first step of a run (fused SGD cannot skip the step that creates its momentum), read the
        flag on the host at once.
        """
        if not self.head.nan_check:
            self.head.step_rows(optimizer)  # Partial FC's sampled rows (a no-op for other heads)
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        loss = self._loss if self._loss is not None else torch.zeros((), device=self.device)
        found = nonfinite_flag(loss, grads)
        self._loss = None
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:  # every rank must take the same decision
            torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MAX)
        if skips_on_device(optimizer) and self._host_updates > 0:
            optimizer.found_inf = found
            self.head.step_rows(optimizer, found)
            self._nonfinite_events.record(found, loss, self.global_step, self.current_epoch, self._batch_idx)
            return
        if not bool(found):
            self._host_updates += 1  # an update that created the optimizer state: the device path may follow
            self.head.step_rows(optimizer)
            return
        self.head.step_rows(optimizer, found)  # a skipped step: Partial FC's pending rows are dropped, not applied
        what = "gradient" if bool(loss.isfinite()) else f"training loss {float(loss)}"
        self._nonfinite(what, self._batch_idx)
        for group in optimizer.param_groups:  # skip mode: no update at all (SGD/AdamW skip params without grad)
            for param in group["params"]:
                param.grad = None

    def _raise_pending_nonfinite(self) -> None:
        """Reads the device-side non-finite record (one host read): warns about skipped batches, or stops."""
        for event in self._nonfinite_events.drain():
            self._nonfinite(event.what, event.batch_idx, event.global_step, event.epoch)

    def _nonfinite(self, what: str, batch_idx: int, global_step: int | None = None, epoch: int | None = None) -> None:
        """Stops (raises) or, in skip mode and under the bound, counts the skipped batch and warns.

        Failing at the first bad step names where it happened; otherwise NaN weights silently poison every later
        step and the checkpoint, and the run only shows a flat chance-level accuracy.
        """
        step = self.global_step if global_step is None else global_step
        where = f"global step {step} (epoch {self.current_epoch if epoch is None else epoch}, batch {batch_idx})"
        if int(self.nonfinite_skipped) < self.max_nonfinite_skips:
            self.nonfinite_skipped += 1
            log.warning(
                "non-finite %s at %s: batch skipped (%d of at most %d)",
                what,
                where,
                int(self.nonfinite_skipped),
                self.max_nonfinite_skips,
            )
            return
        skipped = f" after skipping {int(self.nonfinite_skipped)} batches" if self.max_nonfinite_skips else ""
        raise FloatingPointError(
            f"non-finite {what} at {where} with head {type(self.head).__name__}{skipped}; the last checkpoint is "
            "intact. Lower the learning rate or the head's scale/margin, set model.max_nonfinite_skips=N to skip up "
            "to N such batches, or loss.nan_check=false to continue anyway"
        )

    @torch.no_grad()
    def _log_step(
        self,
        out: HeadOutput,
        labels: torch.Tensor,
        correct: torch.Tensor,
        cos_target: torch.Tensor,
        cos_nearest: torch.Tensor,
    ) -> None:
        # Accuracy and angles come from the plain cosines, so heads with different margins stay comparable.
        values = {
            "train/loss": out.loss.detach(),
            "train/acc": correct.float().mean(),
            "train/lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
        }
        values.update({f"train/{k}": v for k, v in angle_stats(cos_target, cos_nearest).items()})
        values.update({f"train/{k}": v.detach().float() for k, v in self.head.log_values().items()})
        self.log_dict(values, prog_bar=False, batch_size=labels.shape[0])
        # Not logged with prog_bar=True: Lightning would read that value back after every batch. The progress bar
        # shows this host copy instead (facetrain.callbacks.progress.ProgressBarValues); a logging step reads anyway.
        self.progress_values = {"loss": round(float(values["train/loss"]), 4)}

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable[[], Any] | None = None
    ) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # The flag belongs to this step only (GradScaler removes its own the same way).
        vars(getattr(optimizer, "optimizer", optimizer)).pop("found_inf", None)
        # Per-step head schedules (cam-softmax's c, SphereFace's lambda) advance once per optimizer step.
        self.head.on_optimizer_step()

    def on_train_epoch_end(self) -> None:
        self._raise_pending_nonfinite()

    def on_train_end(self) -> None:
        self._raise_pending_nonfinite()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        # After a resume has restored the head's buffers: a schedule over the run keeps the stored length.
        self.head.on_fit_start(self.trainer.estimated_stepping_batches)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._raise_pending_nonfinite()  # a run that should have stopped writes no checkpoint
        bad = [
            name
            for name, t in self.state_dict().items()  # a sharded head adds non-tensor extra state (its generator)
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(t.isfinite().all())
        ]
        if bad:  # never replace a good checkpoint with a diverged model
            raise FloatingPointError(
                f"refusing to save a checkpoint at global step {self.global_step}: non-finite values in {bad[:5]}"
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            )
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config
        checkpoint[RNG_KEY] = gather_rng_states()  # a collective: Lightning calls this hook on every rank
        # A sharded classifier's blocks and their optimizer rows are gathered into one full matrix, so the run resumes
        # with any process count (a collective: Lightning calls this hook on every rank).
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        classifier_checkpoint.on_save_checkpoint(self.head, checkpoint, "head.", optimizers)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The class count is checked, and a sharded classifier cuts its block for this run's process count.
        classifier_checkpoint.on_load_checkpoint(self.head, checkpoint, "head.")
        # Dropout and any other draw from the global generators continue exactly where the checkpoint left them.
        # (The training loader has its own generator, so creating its iterator on resume draws nothing from these.)
        if RNG_KEY in checkpoint:
            inexact = restore_rng_state(checkpoint[RNG_KEY])
            if inexact and self.global_rank == 0:
                log.warning("Global RNG streams do not continue exactly: %s", inexact)
