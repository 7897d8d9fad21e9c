"""Target-logit transforms of the margin-softmax family, as pure tensor functions.

Every function takes the cosine matrix ``cos`` (B×C, cosines between L2-normalised embeddings and class weights) and
the labels (B,) and returns a matrix of the same shape and dtype in which only the B target entries
``cos[i, labels[i]]`` are replaced; the result is *not* yet multiplied by the logit scale ``s``.

Only the B target cosines are gathered, transformed and scattered back into a copy, so the cost is O(B) on top of the
copy and non-target entries stay bit-identical. The transform itself runs in float32 (float64 for float64 input):
bfloat16/float16 carry 8/11 significant bits, too few for ``acos``/``pow`` near ±1, and promoting B scalars is free.

References:
    NormFace: Wang et al., "NormFace: L2 Hypersphere Embedding for Face Verification", ACM MM 2017.
    SphereFace (A-Softmax): Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR 2017.
    CosFace (LMCL): Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018.
    ArcFace: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.
    Cam-Softmax: Suveges & McKenna, "Cam-Softmax for Discriminative Deep Feature Learning", ICPR 2020
        (official code: github stamas02/cam-softmax, ``src/cam_loss.py``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

__all__ = [
    "arcface_logits",
    "cam_softmax_logits",
    "cosface_logits",
    "normface_logits",
    "sphereface_logits",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype used for the B target entries: float64 stays float64, everything else is promoted to float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _clamp_keep_grad(t: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Clamps the values of ``t`` but passes its gradient through unchanged.

    ``torch.clamp`` gives zero gradient at and beyond its bounds, so a target at exactly cos θ = ±1 would silently stop
    learning; here the gradient is that of the formula evaluated at the clamped point.
    """
    return t.detach().clamp(low, high) + (t - t.detach())


def _replace_targets(
    cos: torch.Tensor, labels: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Gathers the target cosines, applies ``transform`` to them and scatters the result into a copy of ``cos``.

    Args:
        cos: Cosine matrix (B×C).
        labels: Integer class labels (B,).
        transform: Maps the (B×1) target cosines, already clamped to [-1, 1] and promoted to the compute dtype, to the
            new target values.

    Returns:
        A new B×C tensor in the dtype of ``cos``; autograd flows through both the kept and the replaced entries.
    """
    if cos.dim() != 2:
        raise ValueError(f"cos must be a 2-D (batch x classes) tensor, got shape {tuple(cos.shape)}")
    if labels.shape != (cos.shape[0],):
        raise ValueError(f"labels must have shape ({cos.shape[0]},) to match cos, got {tuple(labels.shape)}")
    index = labels.reshape(-1, 1).long()
    # Rounding in the matmul can push |cos| a few ulps above 1; acos/Chebyshev/pow are undefined or explode there.
    target = _clamp_keep_grad(cos.gather(1, index).to(_compute_dtype(cos.dtype)), -1.0, 1.0)
    return cos.scatter(1, index, transform(target).to(cos.dtype))


def normface_logits(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NormFace (normalised softmax, Wang et al., ACM MM 2017): the target logit is the plain cosine.

    Exists so that every head can be written as ``s · margin(cos, labels)``.

    Args:
        cos: Cosine matrix (B×C).
        labels: Class labels (B,); unused.

    Returns:
        ``cos`` itself.
    """
    del labels
    return cos


def _chebyshev(t: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m·θ) as the Chebyshev polynomial T_m(cos θ): no acos, so values and gradients are exact at cos θ = ±1."""
    previous, current = torch.ones_like(t), t
    for _ in range(m - 1):
        previous, current = current, 2.0 * t * current - previous
    return current


def _check_sphereface_m(m: int) -> None:
    # ψ is defined piecewise for integer m only; non-integer "SphereFace" margins belong to combined-margin losses.
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1:
        raise ValueError(f"sphereface margin m must be an integer >= 1, got {m!r}")


def sphereface_logits(
    cos: torch.Tensor, labels: torch.Tensor, m: int = 4, lambda_: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """A-Softmax target logit with the annealing blend of the public SphereFace code (Liu et al., CVPR 2017).

    ψ(θ) = (−1)^k·cos(mθ) − 2k for θ ∈ [kπ/m, (k+1)π/m], k ∈ {0, …, m−1}; ψ is continuous and monotonically decreasing
    from 1 at θ = 0 to 1 − 2m at θ = π. The target becomes (λ·cos θ + ψ(θ)) / (1 + λ): λ → ∞ is plain softmax, λ = 0 is
    pure A-Softmax (wy1iu/sphereface ``margin_inner_product_layer``). cos(mθ) is evaluated as a Chebyshev polynomial
    of cos θ and k by comparing cos θ with cos(jπ/m), exactly as the Caffe layer does, so no acos is needed.

    Args:
        cos: Cosine matrix (B×C).
        labels: Class labels (B,).
        m: Integer angular margin (m = 1 gives ψ = cos θ).
        lambda_: Annealing weight λ >= 0 (python float or 0-d tensor).

    Returns:
        Copy of ``cos`` with the target entries replaced (not scaled).
    """
    _check_sphereface_m(m)
    if not isinstance(lambda_, torch.Tensor) and not lambda_ >= 0:
        raise ValueError(f"sphereface lambda_ must be >= 0, got {lambda_}")

    def transform(t: torch.Tensor) -> torch.Tensor:
        # k = #{j in 1..m-1 : θ >= jπ/m}; the boundaries do not matter because ψ is continuous there.
        k = torch.zeros_like(t)
        for j in range(1, m):
            k = k + (t <= math.cos(j * math.pi / m)).to(t.dtype)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        psi = sign * _chebyshev(t, m) - 2.0 * k
        lam = torch.as_tensor(lambda_, dtype=t.dtype, device=t.device)
        return (lam * t + psi) / (1.0 + lam)

    return _replace_targets(cos, labels, transform)


def cosface_logits(cos: torch.Tensor, labels: torch.Tensor, m: float = 0.35) -> torch.Tensor:
    """CosFace / AM-Softmax target logit cos θ_y − m (Wang et al., CVPR 2018, the LMCL loss).

    Args:
        cos: Cosine matrix (B×C).
        labels: Class labels (B,).
        m: Additive cosine margin.

    Returns:
        Copy of ``cos`` with the target entries replaced (not scaled).
    """
    return _replace_targets(cos, labels, lambda t: t - m)


def arcface_logits(cos: torch.Tensor, labels: torch.Tensor, m: float = 0.5, easy_margin: bool = False) -> torch.Tensor:
    """ArcFace target logit cos(θ_y + m) (Deng et al., CVPR 2019, additive angular margin).

    Where θ_y + m > π, i.e. cos θ_y < cos(π − m), cos(θ_y + m) would increase again with θ_y; as in the InsightFace
    reference implementation the target then becomes cos θ_y − m·sin(π − m), which keeps the target logit monotonically
    non-increasing in θ_y over [0, π]. With ``easy_margin`` the margin is applied only where cos θ_y > 0 and the target
    is left unchanged elsewhere.

    Args:
        cos: Cosine matrix (B×C).
        labels: Class labels (B,).
        m: Additive angular margin in radians.
        easy_margin: Apply the margin only to targets with cos θ_y > 0.

    Returns:
        Copy of ``cos`` with the target entries replaced (not scaled).
    """
    threshold = math.cos(math.pi - m)
    fallback_shift = math.sin(math.pi - m) * m

    def transform(t: torch.Tensor) -> torch.Tensor:
        # d acos / dt = -1/sqrt(1 - t²) is infinite at ±1; moving the acos argument eps inside keeps the gradient
        # finite (~sin(m)/sqrt(2·eps)) and changes the value by at most ~sqrt(2·eps)·sin(m).
        eps = torch.finfo(t.dtype).eps
        theta = torch.acos(_clamp_keep_grad(t, -1.0 + eps, 1.0 - eps))
        with_margin = torch.cos(theta + m)
        if easy_margin:
            return torch.where(t > 0, with_margin, t)
        return torch.where(t > threshold, with_margin, t - fallback_shift)

    return _replace_targets(cos, labels, transform)


def _check_cam_c(c: float, upper: float = math.pi / 2) -> None:
    if not 0.0 < c <= upper:
        raise ValueError(f"cam-softmax c must be in (0, pi/2] (pi/2 = {upper!r}), got {c!r}")


def _cam_exponent(c: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """c′ = 1 / (1 − log2(cos c + 1)) as a float64 0-d tensor on ``device``, validating c where that is free."""
    if isinstance(c, torch.Tensor):
        # c is a scheduled hyper-parameter, not a learned one: detaching keeps u^c′ free of the ∂/∂c′ = u^c′·ln u term,
        # which is NaN at u = 0.
        c = c.detach()
        # Reading an accelerator tensor would stall the host on every forward; the heads validate the c values they
        # write into their buffers, so only host tensors are checked here. π/2 rounded to c's dtype is the bound:
        # float32(π/2) lies just above the float64 value.
        if c.device.type == "cpu":
            _check_cam_c(float(c), float(torch.tensor(math.pi / 2, dtype=c.dtype)))
        c = c.to(device=device, dtype=torch.float64)
    else:
        _check_cam_c(float(c))
        c = torch.tensor(float(c), dtype=torch.float64, device=device)
    eps = torch.finfo(torch.float64).eps
    # c → 0 drives the denominator to 0 (c′ → ∞); the floor keeps c′ finite for tiny but valid c.
    exponent = 1.0 / (1.0 - torch.log2(torch.cos(c) + 1.0)).clamp_min(eps)
    # cos(π/2) rounds to ±6e-17 (±4e-8 in float32), which can give c′ slightly below 1; c′ < 1 makes
    # d/du u^c′ = c′·u^(c′−1) infinite at u = 0 (cos = −1). c′ >= 1 holds exactly on (0, π/2], so the clamp only
    # removes rounding.
    return exponent.clamp_min(1.0)


def cam_softmax_logits(cos: torch.Tensor, labels: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Cam-softmax target activation f(cos) = 2·((cos + 1)/2)^c′ − 1, c′ = 1/(1 − log2(cos c + 1)).

    Suveges & McKenna, ICPR 2020; the formula is taken from the official code (``src/cam_loss.py``, where it reads
    ``(cos + 1)^c′ / 2^(c′ − 1) − 1``). f is monotonically increasing with f(−1) = −1, f(1) = 1 and f(cos c) = 0: a
    sample at angle c from its class weight gets the target logit of an orthogonal one. c = π/2 gives c′ = 1, the
    identity (NormFace); smaller c gives a larger c′ and a stronger penalty on the target cosine.

    ``c`` is a hyper-parameter (scheduled by the head, not learned), so no gradient is propagated to it.

    Args:
        cos: Cosine matrix (B×C).
        labels: Class labels (B,).
        c: Angle in (0, π/2] mapped to a zero target logit (python float or 0-d tensor).

    Returns:
        Copy of ``cos`` with the target entries replaced (not scaled).

    Raises:
        ValueError: If c is outside (0, π/2] (checked for python numbers and CPU tensors; a tensor on an accelerator
            is not read back, to avoid a device sync per call).
    """
    exponent = _cam_exponent(c, cos.device)

    def transform(t: torch.Tensor) -> torch.Tensor:
        # t is clamped to [-1, 1], so the base is in [0, 1]; with c′ >= 1 both u^c′ and c′·u^(c′−1) are finite at
        # u = 0 and u = 1, i.e. at cos = −1 and cos = 1. Casting c′ keeps the B entries in the compute dtype.
        return 2.0 * torch.pow((t + 1.0) / 2.0, exponent.to(t.dtype)) - 1.0

    return _replace_targets(cos, labels, transform)
