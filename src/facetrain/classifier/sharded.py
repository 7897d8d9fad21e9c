"""Model-parallel margin softmax and Partial FC for every cosine head (InsightFace ``partial_fc_v2.py``; An et al.,
"Partial FC", CVPR 2022).

Each rank holds one contiguous block of the class centres (:func:`~facetrain.classifier.shards.block_range`; all K
sub-centres of a class on the same rank). Per step:

1. the embeddings (with their gradient) and labels of the global batch are gathered;
2. each rank computes the cosines of the global batch to its block (with Partial FC: to the sampled classes of it);
   sub-centre rows are reduced to classes by their maximum (Sub-center ArcFace, Eq. 2);
3. the target cosine of every sample lives on exactly one rank; a SUM all-reduce gives every rank the global target
   cosines t (B_g,). The configured head then runs its own forward on the augmented matrix [t | cos_block] with all
   labels 0, so its ``observe``/``margin``/``logit_scale`` (and AdaFace's and MagFace's own forwards) are reused
   unchanged: batch statistics (CurricularFace's t, AdaFace's μ/σ, cam-softmax's θ̄) come from the global batch and
   are identical on every rank, and CurricularFace's hard-negative test sees the true target on every rank;
4. the cross-entropy is computed across ranks (:func:`sharded_cross_entropy`): the block's own copy of the target
   column is excluded, the max is all-reduced without gradient, the sum of exponentials with it.

The loss is the global batch's mean cross-entropy, the value the replicated head gives on the gathered batch; the
gradient scaling that makes DDP's averaging of the backbone reproduce the replicated gradients is explained in
:mod:`facetrain.classifier.collectives`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.classifier.collectives import (
    all_gather_batch,
    all_reduce_max,
    all_reduce_sum,
    scale_grad,
    world_and_rank,
)
from facetrain.classifier.row_update import param_group_of, sgd_rows
from facetrain.classifier.sampling import num_sampled, rank_generator, sample_classes
from facetrain.classifier.shards import block_range, init_rows
from facetrain.losses.base import CosineHead, FaceHead, HeadOutput
from facetrain.losses.functional import subcenter_max
from facetrain.utils.rules import Constraint, Interval, check_args

__all__ = ["ShardedClassifier", "sharded_cross_entropy"]

log = logging.getLogger(__name__)

HeadFactory = Callable[..., nn.Module]


def sharded_cross_entropy(target: torch.Tensor, block: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy over the global batch with the classes split over the ranks.

    loss_i = log(e^{z_i − M_i} + Σ_r Σ_{j ∈ block_r, j ≠ y_i} e^{l_ij − M_i}) − (z_i − M_i), with M_i the largest
    logit of row i over all ranks (no gradient: any shift gives the same value) and the sums over a rank's block
    all-reduced with their gradient (InsightFace ``DistCrossEntropyFunc``).

    Args:
        target: (B_g,) target logits z_i, identical on every rank.
        block: B_g×n logits of this rank's classes (n may be 0).
        excluded: B_g×n bool, True at this rank's own copy of a row's target column (it is counted once, as z_i).

    Returns:
        Scalar mean loss, identical on every rank, in float32 (float64 for float64 logits) as ``F.cross_entropy``
        computes it under autocast: bf16/fp16 sums of exponentials over many classes would lose the small terms.
    """
    dtype = torch.float64 if block.dtype == torch.float64 else torch.float32
    target, block = target.to(dtype), block.to(dtype)
    others = block.masked_fill(excluded, -math.inf)
    with torch.no_grad():
        local_max = target.detach() if others.shape[1] == 0 else torch.maximum(target, others.amax(dim=1))
    shift = all_reduce_max(local_max)
    sum_exp = all_reduce_sum(torch.exp(others - shift[:, None]).sum(dim=1)) + torch.exp(target - shift)
    return (torch.log(sum_exp) + shift - target).mean()


class ShardedClassifier(FaceHead):
    """This rank's block of the class centres plus the configured head's margin, with a loss over all ranks.

    The block is laid out when the process group is known (:meth:`configure_shards`, called by the training module's
    ``configure_model``); built outside a process group (or with one process) it is a single shard holding every class,
    and that is logged. ``sample_rate`` = 1 is model parallel (every class of the block every step); below 1 it is
    Partial FC (:mod:`facetrain.classifier.sampling`) with a seeded generator per rank whose state is saved with the
    module (``get_extra_state``), so a resumed run samples what the uninterrupted one would have. Partial FC updates
    only the sampled rows (:meth:`step_rows`, SGD; momentum in the ``weight_momentum`` buffer, rows as ``weight``).

    Args:
        head: ``head(embedding_size=..., num_classes=...)`` builds the configured margin head (the ``loss/`` group);
            it must be a :class:`~facetrain.losses.base.CosineHead` whose only parameter is its class-centre matrix.
        embedding_size: Embedding dimension D.
        num_classes: Global number of identities C.
        sample_rate: Fraction of each block's classes used per step, in (0, 1] (1 = model parallel).
        seed: Seeds the initial class centres (the same global matrix for every world size) and the samplers; None
            is 0.

    Attributes:
        weight: This rank's rows ``[row_start·K, row_stop·K)`` of the global (C·K)×D matrix (row c·K + j is sub-centre
            j of class c).
        num_classes: C.
        row_start: First class of this rank's block.
        row_stop: One past the last class of the block.
        rows_per_class: K, the rows per class (sub-centres; 1 for most heads).
    """

    #: Valid values, checked per config key before the data is read (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "embedding_size": CosineHead.config_constraints["embedding_size"],
        "num_classes": CosineHead.config_constraints["num_classes"],
        "sample_rate": Interval(0.0, 1.0, low_open=True),
        "seed": Interval(0, integer=True, allow_none=True),
    }

    def __init__(
        self,
        head: HeadFactory,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        seed: int | None = 0,
    ) -> None:
        check_args(self, locals(), prefix="classifier")
        seed = 0 if seed is None else seed  # a run without a seed still needs one layout of the initial centres
        inner = head(embedding_size=int(embedding_size), num_classes=2)  # a stand-in matrix, replaced by the block
        check_shardable(inner)
        super().__init__(inner.nan_check)
        self.rows_per_class = inner.weight.shape[0] // inner.num_classes
        del inner.weight  # the class centres live here, one block per rank
        inner.num_classes = int(num_classes)
        self.head = inner
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.world_size, self.rank = 0, -1
        self.row_start = self.row_stop = 0
        self.weight = nn.Parameter(torch.empty(0, self.embedding_size))
        self.generator = torch.Generator()
        self._last: tuple[torch.Tensor, ...] | None = None
        # Partial FC: (row indices, leaf tensor of those rows) of the last forward, and of every forward since the last
        # optimizer step (several under gradient accumulation), awaiting their row update.
        self.sampled: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._layout(*world_and_rank())

    @classmethod
    def check_targets(cls, head_cls: type | None, optimizer_cls: type | None, values: dict[str, Any]) -> str | None:
        """Config-time check (before the data is read): a cosine head, and SGD for Partial FC's row update.

        Returns:
            A message naming the config keys, or None when the combination works.
        """
        if isinstance(head_cls, type) and not issubclass(head_cls, CosineHead):
            return (
                f"classifier: loss={head_cls.__name__} cannot be sharded (model_parallel / partial_fc need a cosine "
                "head such as loss=arcface); use classifier=replicated"
            )
        rate = values.get("sample_rate", 1.0)
        sgd = isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.SGD)
        if isinstance(rate, float | int) and rate < 1 and optimizer_cls is not None and not sgd:
            return (
                f"classifier.sample_rate={rate} (Partial FC) updates the sampled rows with SGD; optimizer="
                f"{optimizer_cls.__name__} is not supported (use optimizer=sgd, or classifier.sample_rate=1.0)"
            )
        return None

    def configure_shards(self) -> bool:
        """Lays out this rank's block for the process group now running; the training module calls it once the
        trainer has set the group up (``configure_model``). Without a group (or with one process) it logs that one
        shard holds every class.

        Returns:
            True: the block is this rank's own (DDP must not all-reduce or broadcast it).

        Raises:
            ValueError: Fewer classes than processes.
        """
        world, rank = world_and_rank()
        if world == 1:
            log.info(
                "classifier: no distributed trainer (world size 1): one shard holds all %d classes", self.num_classes
            )
        self._layout(world, rank)
        return True

    def _layout(self, world: int, rank: int) -> None:
        """Allocates and initialises the block of ``rank`` of ``world`` (no-op when it is already that one)."""
        if (world, rank) == (self.world_size, self.rank):
            return
        if self.num_classes < world:
            raise ValueError(
                f"classifier: num_classes={self.num_classes} is fewer than the {world} processes; every rank needs at "
                "least one class (use classifier=replicated or fewer devices)"
            )
        single = self.world_size == 1  # the one shard built before the process group existed holds every row
        self.world_size, self.rank = world, rank
        self.row_start, self.row_stop = block_range(self.num_classes, world, rank)
        k = self.rows_per_class
        if single:  # keep what was loaded into it (model.init_from) instead of drawing again
            rows = self.weight.detach()[self.row_start * k : self.row_stop * k].clone()
        else:
            rows = init_rows(self.row_start * k, self.row_stop * k, self.embedding_size, self.seed)
        self.weight = nn.Parameter(rows.to(self.weight.device, self.weight.dtype))
        self.generator = rank_generator(self.seed, rank)
        if self.sample_rate < 1.0:  # Partial FC's momentum, kept for the whole block (row_update)
            self.register_buffer("weight_momentum", torch.zeros_like(self.weight.data))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """Global-batch loss from this rank's local batch.

        Args:
            embeddings: This rank's embeddings (B×D), not normalised.
            labels: Their global class labels (B,).

        Returns:
            ``loss``: the replicated head's loss on the gathered batch (identical on every rank); ``logits``: the
            head's B_g×(1 + n) logits of [target | this rank's n block or sampled classes]; ``cosine``: the B_g×n
            cosines to those classes.
        """
        emb, lab = all_gather_batch(embeddings, labels)
        classes, local = self._select(lab)
        weight = self._rows_for_step(classes)
        cos = F.linear(F.normalize(emb, dim=1), F.normalize(weight, dim=1))
        if self.rows_per_class > 1:
            cos = subcenter_max(cos, self.rows_per_class)
        owned = local >= 0
        index = local.clamp_min(0)[:, None]
        target = all_reduce_sum(torch.where(owned, cos.gather(1, index).squeeze(1), 0.0))
        out = self._head_forward(emb, torch.cat([target[:, None], cos], dim=1))
        # What the head adds beyond its cross-entropy (MagFace's λ_g·g(a)); exactly 0 for the other heads.
        extra = out.loss - F.cross_entropy(out.logits, torch.zeros_like(lab))
        excluded = torch.zeros_like(cos, dtype=torch.bool).scatter_(1, index, owned[:, None])
        loss = sharded_cross_entropy(out.logits[:, 0], out.logits[:, 1:], excluded) + extra
        rank_rows = slice(self.rank * embeddings.shape[0], (self.rank + 1) * embeddings.shape[0])
        self._last = (target.detach()[rank_rows], cos.detach()[rank_rows], excluded[rank_rows])
        return HeadOutput(loss, out.logits, cos)

    def _rows_for_step(self, classes: torch.Tensor | None) -> torch.Tensor:
        """The class-centre rows of this step, their gradient divided by W (see collectives: W identical gradients).

        With Partial FC in training the sampled rows are copied into a leaf tensor (:attr:`sampled`; kept with those of
        every forward since the last optimizer step, so gradient accumulation works): the backward fills its gradient
        and :meth:`step_rows` updates those rows only; the block itself gets no gradient.
        """
        if classes is None:
            return scale_grad(self.weight, 1.0 / self.world_size)
        k = self.rows_per_class
        rows = (classes[:, None] * k + torch.arange(k, device=classes.device)).reshape(-1)
        if not (self.training and torch.is_grad_enabled() and self.weight.requires_grad):
            return self.weight[rows]
        active = self.weight.detach()[rows].requires_grad_(True)
        self.sampled = (rows, active)
        self._pending.append(self.sampled)
        return scale_grad(active, 1.0 / self.world_size)

    def step_rows(self, optimizer: torch.optim.Optimizer, found_inf: torch.Tensor | None = None) -> None:
        """Partial FC: SGD on the rows sampled in the last forward, with the optimizer's hyper-parameters for the
        block (:func:`~facetrain.classifier.row_update.sgd_rows`); rows not sampled keep value and momentum.

        The training module calls it once per optimizer step, after the backward (also for a skipped step, with its
        flag, which drops the pending rows); a no-op for model parallel (the optimizer updates the block like any
        parameter). Code that drives the classifier itself must call it after every optimizer step too.

        Args:
            optimizer: The optimizer holding :attr:`weight` (its group gives lr, momentum, weight decay).
            found_inf: The non-finite guard's device flag of this step (non-zero: no update).
        """
        pending = [(rows, active.grad) for rows, active in self._pending if active.grad is not None]
        self._pending = []
        if not pending:
            return
        if len(pending) == 1:
            rows, grad = pending[0]
        else:  # accumulated micro-batches: one gradient per distinct row, summed as a dense gradient would be
            rows, inverse = torch.unique(torch.cat([r for r, _ in pending]), return_inverse=True)
            grad = torch.zeros(len(rows), self.weight.shape[1], dtype=pending[0][1].dtype, device=rows.device)
            grad.index_add_(0, inverse, torch.cat([g for _, g in pending]))
        group = param_group_of(optimizer, self.weight)
        sgd_rows(self.weight.data, self.weight_momentum, rows, grad, group, found_inf)

    def _head_forward(self, embeddings: torch.Tensor, augmented: torch.Tensor) -> HeadOutput:
        """The configured head's own forward on the augmented cosines, target in column 0.

        Heads compute their cosines through ``self.cosine``; pointing it at the precomputed matrix for this call keeps
        every head's forward (feature norms, batch statistics, regularisers) exactly as in the replicated run.
        """
        self.head.cosine = lambda _embeddings: augmented
        try:
            return self.head(embeddings, torch.zeros(augmented.shape[0], dtype=torch.long, device=augmented.device))
        finally:
            del self.head.cosine

    def _select(self, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Sampled block classes (None: the whole block) and each global label's column among them (−1: elsewhere)."""
        local = labels.long() - self.row_start
        owned = (local >= 0) & (local < self.row_stop - self.row_start)
        if self.sample_rate >= 1.0:
            return None, torch.where(owned, local, -1)
        block = self.row_stop - self.row_start
        positive = torch.zeros(block, dtype=torch.bool, device=labels.device)
        positive[local[owned]] = True
        classes = sample_classes(positive, num_sampled(self.sample_rate, block), self.generator)
        column = torch.searchsorted(classes, local.clamp(0, block - 1))
        return classes, torch.where(owned, column, -1)

    @torch.no_grad()
    def target_and_nearest(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Target and nearest non-target cosine of this rank's samples in the last forward (one MAX all-reduce).

        With Partial FC the nearest non-target is the nearest among the classes sampled in that step.
        """
        if self._last is None:
            raise RuntimeError("ShardedClassifier.target_and_nearest needs a forward first")
        target, cos, excluded = self._last
        others = cos.masked_fill(excluded, -math.inf)
        nearest = others.amax(dim=1) if others.shape[1] else torch.full_like(target, -math.inf)
        return target.clamp(-1, 1), all_reduce_max(nearest).clamp(-1, 1)

    def on_fit_start(self, total_steps: float) -> None:
        """Hands the run length to the head's schedules."""
        hook = getattr(self.head, "on_fit_start", None)  # FaceHead's hook; absent on an older base class
        if hook is not None:
            hook(total_steps)

    def on_optimizer_step(self) -> None:
        """Advances the head's schedules (cam-softmax's c, SphereFace's λ)."""
        self.head.on_optimizer_step()

    def at_step(self, step: int, total_steps: int) -> FaceHead | None:
        """The head (margin only, no class centres) as after ``step`` steps, for the margin-curve figure."""
        hook = getattr(self.head, "at_step", None)
        return None if hook is None else hook(step, total_steps)

    def log_values(self) -> dict[str, torch.Tensor]:
        """The head's scalars."""
        return self.head.log_values()

    def get_extra_state(self) -> dict[str, Any]:
        """The Partial FC generator state of this rank (restored by :meth:`set_extra_state`)."""
        return {"generator": self.generator.get_state(), "seed": self.seed, "rank": self.rank}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, rows=[{self.row_start}, {self.row_stop}) of rank {self.rank}/"
            f"{self.world_size}, rows_per_class={self.rows_per_class}, sample_rate={self.sample_rate}"
        )


def check_shardable(head: nn.Module) -> None:
    """Raises ValueError unless ``head`` is a cosine head whose only parameter is its class-centre matrix ``weight``.

    The plain ``softmax`` head (a linear layer with bias) is refused: its bias and un-normalised logits would need
    their own sharded path, and the margin heads are what large-scale training uses.
    """
    weight = getattr(head, "weight", None)
    others = [name for name, _ in head.named_parameters() if name != "weight"]
    if not isinstance(head, CosineHead) or not isinstance(weight, nn.Parameter) or others:
        raise ValueError(
            f"classifier: loss={type(head).__name__} cannot be sharded (model_parallel / partial_fc need a cosine "
            "head whose only parameter is its class centres); use classifier=replicated or a margin loss such as "
            "loss=arcface"
        )
