"""Target-logit transforms of the margin-softmax family, as pure tensor functions.

Every function takes the cosine matrix ``cos`` (B×C, cosines between L2-normalised embeddings and class weights) and
the labels (B,) and returns a matrix of the same shape and dtype in which only the B target entries
``cos[i, labels[i]]`` are replaced; the result is *not* yet multiplied by the logit scale ``s``.

Only the B target cosines are gathered, transformed and scattered back into a copy, so the cost is O(B) on top of the
copy and non-target entries stay bit-identical. Exceptions: :func:`curricularface_logits` also reweights the hard
negatives (a B×C mask and multiply-add, no transcendental), and :func:`subcenter_arcface_logits` first reduces the
B×(C·K) sub-centre cosines to B×C. The transform itself runs in float32 (float64 for float64 input):
bfloat16/float16 carry 8/11 significant bits, too few for ``acos``/``pow`` near ±1, and promoting B scalars is free.

References:
    NormFace: Wang et al., "NormFace: L2 Hypersphere Embedding for Face Verification", ACM MM 2017.
    SphereFace (A-Softmax): Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR 2017.
    CosFace (LMCL): Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018.
    ArcFace: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.
    Cam-Softmax: Suveges & McKenna, "Cam-Softmax for Discriminative Deep Feature Learning", ICPR 2020
        (official code: github stamas02/cam-softmax, ``src/cam_loss.py``).
    Combined margin: Deng et al., ArcFace, CVPR 2019, Eq. 4 (InsightFace ``loss_m1/m2/m3``).
    CurricularFace: Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face Recognition",
        CVPR 2020 (official code: github HuangYG123/CurricularFace, ``head/metrics.py``).
    AdaFace: Kim et al., "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022 (official code:
        github mk-minchul/AdaFace, ``head.py``).
    MagFace: Meng et al., "MagFace: A Universal Representation for Face Recognition and Quality Assessment",
        CVPR 2021 (official code: github IrvingMeng/MagFace, ``models/magface.py``).
    Sub-center ArcFace: Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web
        Faces", ECCV 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "adaface_logits",
    "adaface_margin_scaler",
    "arcface_logits",
    "cam_softmax_logits",
    "combined_logits",
    "cosface_logits",
    "curricularface_logits",
    "magface_logits",
    "magface_margin",
    "magface_regularizer",
    "normface_logits",
    "sphereface_logits",
    "subcenter_arcface_logits",
    "subcenter_max",
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


def _cam_exponent(c: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """c′ = 1 / (1 − log2(cos c + 1)) as a float64 0-d tensor on ``device``."""
    if isinstance(c, torch.Tensor):
        # c is a scheduled hyper-parameter, not a learned one: detaching keeps u^c′ free of the ∂/∂c′ = u^c′·ln u term,
        # which is NaN at u = 0.
        c = c.detach().to(device=device, dtype=torch.float64)
    else:
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
        c: Angle in (0, π/2] mapped to a zero target logit (python float or 0-d tensor). Not checked here (this
            runs every forward): the range is ``facetrain.losses.cam_c_policies.C_RANGE``, enforced where c is
            configured.

    Returns:
        Copy of ``cos`` with the target entries replaced (not scaled).
    """
    exponent = _cam_exponent(c, cos.device)

    def transform(t: torch.Tensor) -> torch.Tensor:
        # t is clamped to [-1, 1], so the base is in [0, 1]; with c′ >= 1 both u^c′ and c′·u^(c′−1) are finite at
        # u = 0 and u = 1, i.e. at cos = −1 and cos = 1. Casting c′ keeps the B entries in the compute dtype.
        return 2.0 * torch.pow((t + 1.0) / 2.0, exponent.to(t.dtype)) - 1.0

    return _replace_targets(cos, labels, transform)


# ----------------------------------------------------------------------------------------------------------------------
# Combined margin, CurricularFace, AdaFace, MagFace, Sub-center ArcFace
# ----------------------------------------------------------------------------------------------------------------------


def _safe_acos(t: torch.Tensor) -> torch.Tensor:
    """acos with a finite gradient at ±1: the argument is moved one eps inside (see :func:`arcface_logits`)."""
    eps = torch.finfo(t.dtype).eps
    return torch.acos(_clamp_keep_grad(t, -1.0 + eps, 1.0 - eps))


def _gather_targets(cos: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validates shapes and returns (index B×1, target cosines B×1 clamped to [-1, 1] in the compute dtype)."""
    if cos.dim() != 2:
        raise ValueError(f"cos must be a 2-D (batch x classes) tensor, got shape {tuple(cos.shape)}")
    if labels.shape != (cos.shape[0],):
        raise ValueError(f"labels must have shape ({cos.shape[0]},) to match cos, got {tuple(labels.shape)}")
    index = labels.reshape(-1, 1).long()
    return index, _clamp_keep_grad(cos.gather(1, index).to(_compute_dtype(cos.dtype)), -1.0, 1.0)


def combined_logits(
    cos: torch.Tensor, labels: torch.Tensor, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2
) -> torch.Tensor:
    """Combined margin target logit cos(m1·θ_y + m2) − m3 (Deng et al., ArcFace, CVPR 2019, Eq. 4).

    m1 is SphereFace's multiplicative, m2 ArcFace's additive angular and m3 CosFace's additive cosine margin; the
    defaults (1.0, 0.3, 0.2) are the "CM1" setting of the ArcFace paper (Table 2) and InsightFace's MXNet
    ``loss_m1/m2/m3``. Beyond θ* = (π − m2)/m1 the angle m1·θ_y + m2 exceeds π and cos(·) would rise again, so there the
    target becomes cos θ_y − δ − m3 with δ = max(m2·sin(π − m2), 1 + cos θ*). For m1 = 1 and m2 up to ≈2.33 the first
    term wins and this is exactly InsightFace's ArcFace fallback (so (1, m, 0) equals :func:`arcface_logits`); the
    second term guarantees that the fallback never lies above the value −1 − m3 reached at θ*, so the target is
    monotonically non-increasing in θ_y on [0, π] for every valid (m1, m2, m3).

    Args:
        cos: Cosine matrix (B×C).
        labels: Class labels (B,).
        m1: Multiplicative angular margin >= 1.
        m2: Additive angular margin in [0, π) radians.
        m3: Additive cosine margin >= 0.

    Returns:
        Copy of ``cos`` with the target entries replaced (not scaled).
    """
    theta_star = (math.pi - m2) / m1
    threshold = math.cos(theta_star)
    shift = max(math.sin(math.pi - m2) * m2, 1.0 + threshold)

    def transform(t: torch.Tensor) -> torch.Tensor:
        with_margin = torch.cos(m1 * _safe_acos(t) + m2) - m3
        return torch.where(t > threshold, with_margin, t - shift - m3)

    return _replace_targets(cos, labels, transform)


def curricularface_logits(
    cos: torch.Tensor, labels: torch.Tensor, m: float = 0.5, t: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """CurricularFace logits (Huang et al., CVPR 2020, Eqs. 8–9) before scaling.

    Target: cos(θ_y + m) with ArcFace's fallback cos θ_y − m·sin(π − m) where θ_y + m > π (official code). Every
    non-target cosine that is a *hard negative*, cos θ_j > cos(θ_y + m), becomes N(t, cos θ_j) = cos θ_j·(t + cos θ_j);
    the others are unchanged. t is the curriculum parameter (an EMA of the mean target cosine, kept by the head); it is
    treated as a constant (no gradient). The reweighting is a mask plus one multiply-add over B×C (no transcendental);
    it runs in the dtype of ``cos``, the B target transforms in float32.

    Args:
        cos: Cosine matrix (B×C).
        labels: Class labels (B,).
        m: Additive angular margin in [0, π).
        t: Curriculum parameter (python float or 0-d tensor).

    Returns:
        New B×C tensor: targets replaced, hard negatives reweighted (not scaled).
    """
    index, target = _gather_targets(cos, labels)
    cos_theta_m = torch.cos(_safe_acos(target) + m)
    final_target = torch.where(target > math.cos(math.pi - m), cos_theta_m, target - math.sin(math.pi - m) * m)
    # The official code compares against the un-fallbacked cos(θ_y + m); the target column itself is overwritten below.
    hard = cos > cos_theta_m.detach().to(cos.dtype)
    t_ = torch.as_tensor(t, device=cos.device).detach().to(cos.dtype)
    reweighted = torch.where(hard, cos * (t_ + cos), cos)
    return reweighted.scatter(1, index, final_target.to(cos.dtype))


def adaface_margin_scaler(
    norms: torch.Tensor, mean: float | torch.Tensor, std: float | torch.Tensor, h: float = 0.333, eps: float = 1e-3
) -> torch.Tensor:
    """AdaFace's image-quality proxy ẑ = clip(h·(‖z‖ − μ_z)/(σ_z + eps), −1, 1) (Kim et al., CVPR 2022, Eq. 11).

    Args:
        norms: Feature norms ‖z‖ (B,); detached, as in the official code (the norm is a quality signal, not trained
            through the margin).
        mean: Batch-statistics estimate μ_z.
        std: Batch-statistics estimate σ_z.
        h: Concentration h > 0 (0.333 puts ~68% of the samples inside the unclipped range).
        eps: Keeps the division finite when σ_z = 0.

    Returns:
        ẑ in [−1, 1], shape (B,), float32 (float64 for float64 norms), no gradient.
    """
    norms = norms.detach().to(_compute_dtype(norms.dtype))
    mean = torch.as_tensor(mean, device=norms.device).detach().to(norms.dtype)
    std = torch.as_tensor(std, device=norms.device).detach().to(norms.dtype)
    return (h * (norms - mean) / (std + eps)).clamp(-1.0, 1.0)


def adaface_logits(
    cos: torch.Tensor, labels: torch.Tensor, margin_scaler: torch.Tensor | float, m: float = 0.4
) -> torch.Tensor:
    """AdaFace target logit cos(θ_y + g_angle) − g_add (Kim et al., CVPR 2022, Eqs. 12–13).

    g_angle = −m·ẑ and g_add = m·ẑ + m: high-quality samples (ẑ → 1) get a CosFace-like margin 2m, low-quality ones
    (ẑ → −1) an ArcFace-like angular margin m on hard samples. As in the official ``head.py`` the margined angle is
    clipped to [eps, π − eps] with eps = 1e-3. Unlike the official code, non-target cosines are not clipped (they
    must stay untouched).

    Args:
        cos: Cosine matrix (B×C).
        labels: Class labels (B,).
        margin_scaler: ẑ per sample (B,) or a scalar, in [−1, 1]; see :func:`adaface_margin_scaler`. No gradient
            flows into it.
        m: Margin m >= 0.

    Returns:
        Copy of ``cos`` with the target entries replaced (not scaled).
    """
    eps = 1e-3

    def transform(t: torch.Tensor) -> torch.Tensor:
        z = torch.as_tensor(margin_scaler, device=t.device).detach().to(t.dtype).reshape(-1, 1)
        theta = (_safe_acos(t) - m * z).clamp(eps, math.pi - eps)
        return torch.cos(theta) - (m + m * z)

    return _replace_targets(cos, labels, transform)


def magface_margin(
    norms: torch.Tensor, l_a: float = 10.0, u_a: float = 110.0, l_m: float = 0.45, u_m: float = 0.8
) -> torch.Tensor:
    """MagFace's magnitude-aware margin m(a) = (u_m − l_m)/(u_a − l_a)·(a − l_a) + l_m (Meng et al., CVPR 2021, Eq. 4).

    a = ‖x‖ is clamped to [l_a, u_a] as in the official code (so outside that range neither m nor g has a gradient
    w.r.t. a). The gradient w.r.t. a inside the range is kept: it is part of the MagFace objective.
    """
    a = norms.clamp(l_a, u_a)
    return (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m


def magface_regularizer(norms: torch.Tensor, l_a: float = 10.0, u_a: float = 110.0) -> torch.Tensor:
    """MagFace's magnitude regulariser g(a) = a/u_a² + 1/a per sample (Meng et al., CVPR 2021, Eq. 5; official code).

    g is convex and, since g′(a) = 1/u_a² − 1/a² <= 0, decreasing on [l_a, u_a]; with m(a) increasing this gives each
    sample a unique optimal magnitude (the paper's Theorem 3.1). a is clamped to [l_a, u_a] as in the code.
    """
    a = norms.to(_compute_dtype(norms.dtype)).clamp(l_a, u_a)
    return a / (u_a * u_a) + 1.0 / a


def magface_logits(
    cos: torch.Tensor,
    labels: torch.Tensor,
    norms: torch.Tensor,
    l_a: float = 10.0,
    u_a: float = 110.0,
    l_m: float = 0.45,
    u_m: float = 0.8,
    easy_margin: bool = True,
) -> torch.Tensor:
    """MagFace target logit cos(θ_y + m(a_i)) (Meng et al., CVPR 2021, Eq. 6), as in the official ``MagLinear``.

    The paper writes cos(θ_y + m(a_i)) for every target; cos(θ + m) rises again where θ_y + m(a_i) > π, so the
    official code (github IrvingMeng/MagFace ``models/magface.py`` and ``models/parallel_maglinear.py``) has two
    variants: ``easy_margin`` (its default, which neither of its model builders overrides, so its training used it)
    applies the margin only where cos θ_y > 0 and leaves the other targets unchanged; without it, the InsightFace
    fallback cos θ_y − m·sin(π − m) below cos(π − m), per sample.

    Args:
        cos: Cosine matrix (B×C).
        labels: Class labels (B,).
        norms: Un-normalised feature magnitudes a_i = ‖x_i‖ (B,); the gradient through m(a_i) is kept.
        l_a: Lower magnitude bound.
        u_a: Upper magnitude bound.
        l_m: Margin at a = l_a.
        u_m: Margin at a = u_a.
        easy_margin: Margin only where cos θ_y > 0 (official training); False: the InsightFace fallback.

    Returns:
        Copy of ``cos`` with the target entries replaced (not scaled).
    """
    if norms.shape != (cos.shape[0],):
        raise ValueError(f"magface norms must have shape ({cos.shape[0]},), got {tuple(norms.shape)}")

    def transform(t: torch.Tensor) -> torch.Tensor:
        m = magface_margin(norms.to(t.dtype), l_a, u_a, l_m, u_m).reshape(-1, 1)
        with_margin = torch.cos(_safe_acos(t) + m)
        if easy_margin:
            return torch.where(t > 0, with_margin, t)
        # Per-sample InsightFace fallback: threshold cos(π − m) and shift m·sin(π − m).
        return torch.where(t > torch.cos(math.pi - m), with_margin, t - torch.sin(math.pi - m) * m)

    return _replace_targets(cos, labels, transform)


def subcenter_max(cos: torch.Tensor, k: int) -> torch.Tensor:
    """Per-class maximum over K sub-centres (Deng et al., Sub-center ArcFace, ECCV 2020, Eq. 2).

    Args:
        cos: Cosines to all sub-centres, B×(C·K); column c·K + j is sub-centre j of class c (InsightFace layout).
        k: Sub-centres per class K >= 1.

    Returns:
        B×C tensor of max_j cos θ_{c,j}.
    """
    # A shape assertion (k is checked where it is configured: SubCenterArcFaceHead.config_constraints).
    if not isinstance(k, int) or k < 1 or cos.dim() != 2 or cos.shape[1] % k:
        raise ValueError(f"subcenter cos must be B x (C*k) with k={k}, got shape {tuple(cos.shape)}")
    return cos.reshape(cos.shape[0], cos.shape[1] // k, k).amax(dim=2)


def subcenter_arcface_logits(cos: torch.Tensor, labels: torch.Tensor, k: int = 3, m: float = 0.5) -> torch.Tensor:
    """Sub-center ArcFace: ArcFace (:func:`arcface_logits`) on the per-class max over K sub-centres (ECCV 2020).

    Args:
        cos: Cosines to all sub-centres, B×(C·K), layout of :func:`subcenter_max`.
        labels: Class labels (B,) in [0, C).
        k: Sub-centres per class.
        m: Additive angular margin in [0, π).

    Returns:
        B×C margin-adjusted cosines (not scaled).
    """
    return arcface_logits(subcenter_max(cos, k), labels, m)
