"""SphereFace / A-Softmax head (Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR 2017).

A-Softmax: L = −log( e^{‖x‖ψ(θ_y)} / (e^{‖x‖ψ(θ_y)} + Σ_{j≠y} e^{‖x‖cos θ_j}) ), ψ(θ) = (−1)^k cos(mθ) − 2k on
[kπ/m, (k+1)π/m], with normalised class weights and un-normalised features. Training the pure loss from scratch does
not converge, so the public code (github wy1iu/sphereface, ``margin_inner_product_layer``) blends the target with the
plain logit, (λ·cos θ_y + ψ(θ_y)) / (1 + λ), and anneals λ = max(λ_min, base·(1 + γ·iter)^(−power)).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch

from facetrain.losses.base import CosineHead
from facetrain.losses.functional import sphereface_logits
from facetrain.utils.rules import NON_NEGATIVE, Constraint, Interval, check_args

__all__ = ["SphereFaceHead"]


class SphereFaceHead(CosineHead):
    """A-Softmax with the λ annealing of the public SphereFace code.

    The defaults (m = 4, base 1000, γ = 0.12, power 1, λ_min = 5, scale by ‖x‖) are those of the released
    ``sphereface_model.prototxt`` (type QUADRUPLE) used for the CASIA-WebFace SphereFace-20 model. The iteration counter
    is a buffer advanced by :meth:`on_optimizer_step`, so it survives a checkpoint resume; it counts optimizer steps,
    starting at 0 (the Caffe layer increments before its first forward, so its first λ uses iter = 1, and it counts
    forward passes, which differs from ours under gradient accumulation).

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        m: Integer angular margin m >= 1.
        scale: ``None`` for the original scaling by the per-sample feature norm ‖x‖; a float s > 0 normalises the
            features too and uses the fixed scale s (the "A-Softmax-NormFea" variant).
        lambda_base: λ at iteration 0 (before the λ_min floor).
        lambda_gamma: γ >= 0 of the decay (1 + γ·iter)^(−power).
        lambda_power: power >= 0 of the decay.
        lambda_min: Floor λ_min >= 0 of λ for the rest of training.
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        **CosineHead.config_constraints,
        "scale": Interval(0.0, low_open=True, allow_none=True),
        "m": Interval(1, integer=True),
        "lambda_base": NON_NEGATIVE,
        "lambda_gamma": NON_NEGATIVE,
        "lambda_power": NON_NEGATIVE,
        "lambda_min": NON_NEGATIVE,
    }

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: int = 4,
        scale: float | None = None,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
        nan_check: bool = True,
    ) -> None:
        check_args(self, locals())
        super().__init__(embedding_size, num_classes, scale, nan_check)
        self.m = int(m)
        self.lambda_base = float(lambda_base)
        self.lambda_gamma = float(lambda_gamma)
        self.lambda_power = float(lambda_power)
        self.lambda_min = float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    def current_lambda(self) -> torch.Tensor:
        """λ = max(λ_min, base·(1 + γ·iter)^(−power)) at the current iteration, as a 0-d float32 tensor."""
        decay = torch.pow(1.0 + self.lambda_gamma * self.iteration.to(torch.float32), -self.lambda_power)
        return torch.clamp(self.lambda_base * decay, min=self.lambda_min)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Replaces the target cosines by the λ-blended ψ(θ)."""
        return sphereface_logits(cos, labels, self.m, self.current_lambda())

    def on_optimizer_step(self) -> None:
        """Advances the λ annealing by one iteration."""
        self.iteration.add_(1)

    def at_step(self, step: int, total_steps: int) -> SphereFaceHead:
        """A copy with λ as after ``step`` optimizer steps (e.g. the λ_min floor of a long run, for the figure)."""
        del total_steps
        head = copy.deepcopy(self)
        head.iteration.fill_(step)
        return head

    def log_values(self) -> dict[str, torch.Tensor]:
        """Logs the current λ as ``sphereface_lambda``."""
        return {"sphereface_lambda": self.current_lambda()}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, m={self.m}, lambda_base={self.lambda_base}, lambda_gamma={self.lambda_gamma}, "
            f"lambda_power={self.lambda_power}, lambda_min={self.lambda_min}"
        )
