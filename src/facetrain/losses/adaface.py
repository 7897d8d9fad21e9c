"""AdaFace head (Kim et al., "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022).

The feature norm ‖z‖ serves as an image-quality proxy: ẑ = clip(h·(‖z‖ − μ_z)/(σ_z + eps), −1, 1) (Eq. 11), with μ_z
and σ_z EMAs of the batch mean and standard deviation of ‖z‖ (Eq. 12, momentum α = t_alpha). The target logit is
s·(cos(θ_y − m·ẑ) − (m + m·ẑ)) (Eq. 13): an angular margin for low-quality and an additive one for high-quality
samples. Defaults s = 64, m = 0.4, h = 0.333, α = 0.01 from the paper and the official training config
(github mk-minchul/AdaFace, ``head.py``, ``config.py``); μ_z and σ_z start at 20 and 100 as in ``head.py``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from facetrain.losses.base import ANGULAR_MARGIN, CosineHead, HeadOutput
from facetrain.losses.functional import adaface_logits, adaface_margin_scaler
from facetrain.utils.rules import POSITIVE, PROBABILITY, Constraint, check_args

__all__ = ["AdaFaceHead"]


class AdaFaceHead(CosineHead):
    """AdaFace: quality-adaptive margin driven by the norms of the un-normalised embeddings the head receives.

    μ_z and σ_z are float32 buffers (saved in checkpoints) updated in every training forward before the margin of that
    batch is computed, as in the official code; in eval mode they are only read. Norms are clipped to [0.001, 100] and
    detached, as in ``head.py``; σ_z is the unbiased batch std, so a batch of one sample leaves σ_z unchanged.

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        scale: Logit scale s > 0.
        margin: Margin m in [0, π).
        h: Concentration of ẑ, > 0.
        t_alpha: EMA weight α in [0, 1] of the current batch statistics.
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        **CosineHead.config_constraints,
        "margin": ANGULAR_MARGIN,
        "h": POSITIVE,
        "t_alpha": PROBABILITY,
    }

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        nan_check: bool = True,
    ) -> None:
        check_args(self, locals())
        super().__init__(embedding_size, num_classes, scale, nan_check)
        self.m, self.h, self.t_alpha = float(margin), float(h), float(t_alpha)
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    @torch.no_grad()
    def _update_statistics(self, norms: torch.Tensor) -> None:
        alpha = self.t_alpha
        self.batch_mean.mul_(1.0 - alpha).add_(alpha * norms.mean().to(self.batch_mean.dtype))
        if norms.numel() > 1:  # the unbiased std of one sample is NaN
            self.batch_std.mul_(1.0 - alpha).add_(alpha * norms.std().to(self.batch_std.dtype))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """Updates the norm statistics (training mode only) and returns the AdaFace loss.

        Args:
            embeddings: Backbone embeddings (B×D), not normalised; their norms are the quality proxy.
            labels: Class labels (B,).

        Returns:
            Loss, scaled logits and cosines.
        """
        norms = embeddings.detach().float().norm(dim=1).clamp(0.001, 100.0)
        if self.training:
            self._update_statistics(norms)
        cos = self.cosine(embeddings)
        logits = self.scale * self.margin(cos, labels, norms)
        return HeadOutput(F.cross_entropy(logits, labels), logits, cos)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        """AdaFace target transform with the current statistics; no side effects.

        Args:
            cos: Cosine matrix (B×C).
            labels: Class labels (B,).
            norms: Feature norms (B,), clipped to [0.001, 100]. ``None`` means a sample of average quality
                (‖z‖ = μ_z, so ẑ = 0: the target becomes cos θ_y − m), e.g. for plotting the margin curve.

        Returns:
            Copy of ``cos`` with the target entries replaced (not scaled).
        """
        if norms is None:
            scaler: torch.Tensor | float = 0.0
        else:
            scaler = adaface_margin_scaler(norms, self.batch_mean, self.batch_std, self.h)
        return adaface_logits(cos, labels, scaler, self.m)

    def log_values(self) -> dict[str, torch.Tensor]:
        """Logs the running norm statistics as ``adaface_norm_mean`` and ``adaface_norm_std``."""
        return {
            "adaface_norm_mean": self.batch_mean.detach().clone(),
            "adaface_norm_std": self.batch_std.detach().clone(),
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.m}, h={self.h}, t_alpha={self.t_alpha}"
