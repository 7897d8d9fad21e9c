"""Angle statistics of a training batch: how far each sample is from its class centre and from the nearest other.

For the margin heads (ArcFace, CosFace, cam-softmax, ...) the angle θ_y between an embedding and its class centre is
what the margin acts on; the nearest non-target angle min_{j≠y} θ_j is what it must stay below. The training module
logs their means and spreads (``train/theta_target``, ``train/theta_nearest``) at its logging steps, and the head
curves callback (:mod:`facetrain.callbacks.head_curves`) histograms the per-sample values.
"""

from __future__ import annotations

import torch

__all__ = ["angle_stats", "target_and_nearest_cosines"]


def target_and_nearest_cosines(cosine: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target cosine cos θ_y and the largest non-target cosine max_{j≠y} cos θ_j of every row.

    ``topk(2)`` instead of masking the target column avoids a B×C copy: the nearest non-target is the best entry
    unless that is the target, then the second best (a tie with the target is still reported correctly).

    Args:
        cosine: B×C cosines (C >= 2).
        labels: Class labels (B,).

    Returns:
        Two (B,) tensors, clamped to [-1, 1] so that ``acos`` is defined.
    """
    cos_y = cosine.gather(1, labels[:, None].long()).squeeze(1)
    top = cosine.topk(2, dim=1)
    top_is_target = top.indices[:, 0] == labels
    cos_nearest = torch.where(top_is_target, top.values[:, 1], top.values[:, 0])
    return cos_y.clamp(-1, 1), cos_nearest.clamp(-1, 1)


def angle_stats(cos_target: torch.Tensor, cos_nearest: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean and (population) std in degrees of the target angle θ_y and the nearest non-target angle.

    The population std (``correction=0``) stays finite for a batch of one.
    """
    theta_y = torch.rad2deg(torch.acos(cos_target.float()))
    theta_n = torch.rad2deg(torch.acos(cos_nearest.float()))
    return {
        "theta_target": theta_y.mean(),
        "theta_target_std": theta_y.std(correction=0),
        "theta_nearest": theta_n.mean(),
        "theta_nearest_std": theta_n.std(correction=0),
    }
