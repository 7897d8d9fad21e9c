"""MagFace head (Meng et al., "MagFace: A Universal Representation for Face Recognition and Quality Assessment",
CVPR 2021).

L = CE(s·cos(θ_y + m(a_i)), y) + λ_g·g(a_i) averaged over the batch (Eq. 6), with a_i = ‖x_i‖ the magnitude of the
un-normalised embedding, m(a) = (u_m − l_m)/(u_a − l_a)·(a − l_a) + l_m increasing in a (Eq. 4) and
g(a) = a/u_a² + 1/a (Eq. 5); a is clamped to [l_a, u_a]. Defaults s = 64, l_a = 10, u_a = 110, l_m = 0.45,
u_m = 0.8, λ_g = 35 from the official code (github IrvingMeng/MagFace, ``run/run_dist.sh``, ``models/magface.py``).
The magnitude then encodes face quality.

Targets with θ_y + m(a) > π (decision, issue 13): the paper's cos(θ_y + m(a)) is not monotone there. The official
``MagLinear`` / ``ParallelMagLinear`` default to ``easy_margin=True`` (margin only where cos θ_y > 0, the target left
at cos θ_y elsewhere) and neither model builder (``models/magface.py``, ``models/magface_dist.py``) overrides it, so
the published models were trained that way; it is the default here too. ``loss.easy_margin=false`` selects the
code's other branch, the InsightFace fallback cos θ_y − m·sin(π − m) (monotone in θ_y; facetrain's behaviour before).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from facetrain.losses.base import ANGULAR_MARGIN, CosineHead, HeadOutput
from facetrain.losses.functional import magface_logits, magface_regularizer
from facetrain.utils.rules import NON_NEGATIVE, POSITIVE, Constraint, OneOf, check_args

__all__ = ["MagFaceHead"]


class MagFaceHead(CosineHead):
    """MagFace: magnitude-aware angular margin plus the magnitude regulariser added to the loss.

    Args:
        embedding_size: Embedding dimension D.
        num_classes: Number of identities C.
        scale: Logit scale s > 0.
        l_a: Lower magnitude bound, > 0.
        u_a: Upper magnitude bound, > l_a.
        l_m: Margin at a = l_a, in [0, π).
        u_m: Margin at a = u_a, in (l_m, π).
        lambda_g: Weight λ_g >= 0 of the regulariser g(a).
        easy_margin: True (official training): margin only for targets with cos θ_y > 0; False: the InsightFace
            fallback below cos(π − m(a)) (module docstring).
    """

    #: Valid values, checked per config key before the data is read and by the constructor (facetrain.utils.rules).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        **CosineHead.config_constraints,
        "l_a": POSITIVE,
        "u_a": POSITIVE,
        "l_m": ANGULAR_MARGIN,
        "u_m": ANGULAR_MARGIN,
        "lambda_g": NON_NEGATIVE,
        "easy_margin": OneOf((True, False)),
    }

    @classmethod
    def check_config(cls, values: dict[str, object]) -> str | None:
        """Relations between keys (at config time and by the constructor): l_a < u_a and l_m < u_m."""
        for low, high, defaults in (("l_a", "u_a", (10.0, 110.0)), ("l_m", "u_m", (0.45, 0.8))):
            lo, hi = values.get(low, defaults[0]), values.get(high, defaults[1])
            if isinstance(lo, float | int) and isinstance(hi, float | int) and not lo < hi:
                return f"{low}={lo!r} must be < {high}={hi!r}"
        return None

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        easy_margin: bool = True,
        nan_check: bool = True,
    ) -> None:
        check_args(self, locals())
        super().__init__(embedding_size, num_classes, scale, nan_check)
        self.l_a, self.u_a, self.l_m, self.u_m = float(l_a), float(u_a), float(l_m), float(u_m)
        self.lambda_g = float(lambda_g)
        self.easy_margin = easy_margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """Returns CE of the magnitude-aware logits plus λ_g·mean g(a); ``logits`` excludes the regulariser.

        Args:
            embeddings: Backbone embeddings (B×D), not normalised; their norms are the magnitudes a_i.
            labels: Class labels (B,).

        Returns:
            Loss, scaled logits and cosines.
        """
        # float32 norms: a bf16 norm of ~100 has a resolution of 0.5, too coarse for m(a) and g(a).
        norms = embeddings.float().norm(dim=1)
        cos = self.cosine(embeddings)
        logits = self.scale * self.margin(cos, labels, norms)
        regularizer = magface_regularizer(norms, self.l_a, self.u_a).mean()
        return HeadOutput(F.cross_entropy(logits, labels) + self.lambda_g * regularizer, logits, cos)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        """Magnitude-aware target transform cos(θ_y + m(a)); no side effects.

        Args:
            cos: Cosine matrix (B×C).
            labels: Class labels (B,).
            norms: Feature magnitudes a (B,). ``None`` means a mid-range magnitude a = (l_a + u_a)/2, i.e. the margin
                (l_m + u_m)/2, e.g. for plotting the margin curve.

        Returns:
            Copy of ``cos`` with the target entries replaced (not scaled).
        """
        if norms is None:
            norms = torch.full((cos.shape[0],), (self.l_a + self.u_a) / 2, dtype=cos.dtype, device=cos.device)
        return magface_logits(cos, labels, norms, self.l_a, self.u_a, self.l_m, self.u_m, self.easy_margin)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_m}, u_m={self.u_m}, "
            f"lambda_g={self.lambda_g}, easy_margin={self.easy_margin}"
        )
