"""Benchmark every head in ``configs/loss/`` against a bare normalised-linear + cross-entropy floor.

For each head option the script times forward + backward of ``head(x, labels).loss`` and, interleaved in the same
loop, of the floor ``cross_entropy(s · normalize(x) @ normalize(W).T, labels)`` on the same shapes (W has the head's
weight shape, K·C rows for sub-center ArcFace), and reports the medians and their ratio. It also checks that each
margin head's functional form (which touches only the B target entries) equals a straightforward full-matrix,
one-hot implementation of the same formula.

Usage::

    python scripts/bench_heads.py                       # B=256, D=512, C in {10572, 100000}
    python scripts/bench_heads.py --quick               # small shapes, few repeats (a smoke check)
    python scripts/bench_heads.py --classes 10572 --repeats 30

Results are printed as a table and written to ``bench_results/heads.json`` (git-ignored) with machine info.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from facetrain.losses.base import CosineHead, FaceHead
from facetrain.utils.bench import machine_info, write_report

ROOT = Path(__file__).resolve().parents[1]
LOSS_DIR = ROOT / "configs" / "loss"
DEFAULT_OUT = ROOT / "bench_results" / "heads.json"

Reference = Callable[[torch.Tensor, FaceHead], torch.Tensor]


# --- full-matrix references: apply the target transform to every entry, then pick targets with a one-hot mask ------
def _ref_normface(cos: torch.Tensor, head: FaceHead) -> torch.Tensor:
    return cos


def _ref_cosface(cos: torch.Tensor, head: FaceHead) -> torch.Tensor:
    return cos - head.m


def _ref_arcface(cos: torch.Tensor, head: FaceHead) -> torch.Tensor:
    theta = torch.acos(cos.clamp(-1.0, 1.0))
    with_margin = torch.cos(theta + head.m)
    if head.easy_margin:
        return torch.where(cos > 0, with_margin, cos)
    return torch.where(cos > math.cos(math.pi - head.m), with_margin, cos - math.sin(math.pi - head.m) * head.m)


def _ref_combined(cos: torch.Tensor, head: FaceHead) -> torch.Tensor:
    # cos(m1·θ + m2) − m3 up to θ* = (π − m2)/m1, then the documented monotone fallback cos θ − δ − m3.
    theta = torch.acos(cos.clamp(-1.0, 1.0))
    theta_star = (math.pi - head.m2) / head.m1
    shift = max(math.sin(math.pi - head.m2) * head.m2, 1.0 + math.cos(theta_star))
    return torch.where(theta < theta_star, torch.cos(head.m1 * theta + head.m2), cos - shift) - head.m3


def _ref_sphereface(cos: torch.Tensor, head: FaceHead) -> torch.Tensor:
    # Textbook ψ(θ) = (−1)^k cos(mθ) − 2k with k = ⌊mθ/π⌋, via acos (the head uses Chebyshev polynomials instead).
    theta = torch.acos(cos.clamp(-1.0, 1.0))
    k = torch.floor(head.m * theta / math.pi).clamp(max=head.m - 1)
    psi = (1.0 - 2.0 * torch.remainder(k, 2.0)) * torch.cos(head.m * theta) - 2.0 * k
    lam = float(head.current_lambda())
    return (lam * cos + psi) / (1.0 + lam)


def _ref_cam_softmax(cos: torch.Tensor, head: FaceHead) -> torch.Tensor:
    exponent = 1.0 / (1.0 - math.log2(math.cos(float(head.c)) + 1.0))
    return 2.0 * ((cos.clamp(-1.0, 1.0) + 1.0) / 2.0) ** exponent - 1.0


REFERENCES: dict[str, Reference] = {
    "NormFaceHead": _ref_normface,
    "CosFaceHead": _ref_cosface,
    "ArcFaceHead": _ref_arcface,
    "CombinedMarginHead": _ref_combined,
    "SphereFaceHead": _ref_sphereface,
    "CamSoftmaxHead": _ref_cam_softmax,
}


def one_hot_reference(cos: torch.Tensor, labels: torch.Tensor, head: FaceHead, rows: int = 16) -> torch.Tensor | None:
    """Full-matrix margin in float64: ``onehot·f(cos) + (1 − onehot)·cos``, ``rows`` rows at a time to bound memory.

    Returns None when there is no reference for the head's class.
    """
    ref = REFERENCES.get(type(head).__name__)
    if ref is None:
        return None
    out = torch.empty_like(cos, dtype=torch.float64)
    for start in range(0, cos.shape[0], rows):
        block = cos[start : start + rows].double()
        onehot = F.one_hot(labels[start : start + rows], cos.shape[1]).double()
        out[start : start + rows] = onehot * ref(block, head) + (1.0 - onehot) * block
    return out


def functional_max_diff(head: FaceHead, cos: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Max |head.margin(cos) − one-hot reference| over the whole B×C matrix; None if not a margin head."""
    if not isinstance(head, CosineHead):
        return None
    with torch.no_grad():
        ref = one_hot_reference(cos, labels, head)
        if ref is None:
            return None
        got = head.margin(cos, labels).double()
    return float((got - ref).abs().max())


# --- timing -------------------------------------------------------------------------------------------------------
def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_interleaved(
    head: FaceHead,
    embed_dim: int,
    num_classes: int,
    batch: int,
    repeats: int,
    warmup: int,
    seed: int,
    budget_s: float = float("inf"),
    min_repeats: int = 5,
) -> dict[str, Any]:
    """Median forward+backward times of ``head`` and of the floor, measured alternately in one loop.

    Interleaving (and alternating which goes first) means slow drifts of the machine (thermal, other processes)
    hit both measurements alike, so the ratio stays meaningful even when absolute times wander. The loop stops after
    ``repeats`` timed pairs, or earlier once ``budget_s`` is spent and at least ``min_repeats`` pairs were timed, so
    the large class counts keep the whole bench within minutes on a small CPU.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, embed_dim, generator=gen, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    # The floor has the head's weight matrix shape: K·C rows for sub-center ArcFace, whose matmul is K times larger
    # by definition; the margin's own cost is what the ratio should show.
    rows = num_classes * int(getattr(head, "k", 1))
    weight = torch.nn.Parameter(torch.randn(rows, embed_dim, generator=gen) * 0.01)
    scale = getattr(head, "scale", None) or 64.0

    def run_head() -> None:
        head.zero_grad(set_to_none=True)
        x.grad = None
        head(x, labels).loss.backward()

    def run_floor() -> None:
        weight.grad = None
        x.grad = None
        logits = scale * F.linear(F.normalize(x, dim=1), F.normalize(weight, dim=1))
        F.cross_entropy(logits, labels).backward()

    head_times: list[float] = []
    floor_times: list[float] = []
    start = time.perf_counter()
    for i in range(warmup + repeats):
        pair = [(run_head, head_times), (run_floor, floor_times)]
        for fn, times in pair if i % 2 == 0 else pair[::-1]:
            elapsed = _timed(fn)
            if i >= warmup:
                times.append(elapsed)
        if len(head_times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    head_ms = statistics.median(head_times) * 1e3
    floor_ms = statistics.median(floor_times) * 1e3
    return {
        "head_ms": head_ms,
        "floor_ms": floor_ms,
        "ratio": head_ms / floor_ms,
        "head_ms_iqr": _iqr(head_times) * 1e3,
        "floor_ms_iqr": _iqr(floor_times) * 1e3,
        "repeats": len(head_times),
        "floor_rows": rows,
    }


def _iqr(values: list[float]) -> float:
    if len(values) < 4:
        return float("nan")
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


# --- discovery ----------------------------------------------------------------------------------------------------
def load_loss_config(path: Path) -> DictConfig:
    """The config node of one ``configs/loss`` file; a file with a Hydra defaults list is composed through Hydra.

    ``OmegaConf.load`` suffices for a flat file, but nested groups (``loss/c_policy``) only exist after composition.
    """
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig) or "defaults" not in cfg:
        return cfg
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(path.parent.parent), version_base="1.3"):
        return compose("train", overrides=[f"loss={path.stem}"]).loss


def build_head(path: Path, embed_dim: int, num_classes: int) -> FaceHead | str:
    """Instantiates the head of one ``configs/loss`` file, or returns why the file was skipped."""
    try:
        cfg = load_loss_config(path)
    except Exception as err:  # a file that is not a head (or is being edited) must not stop the bench
        return f"not loadable: {type(err).__name__}: {err}"
    if not isinstance(cfg, DictConfig) or "_target_" not in cfg:
        return "no _target_"
    try:
        factory = hydra.utils.instantiate(cfg)
        head = factory(embedding_size=embed_dim, num_classes=num_classes) if callable(factory) else factory
    except Exception as err:  # a file that is not a head (or is being edited) must not stop the bench
        return f"not instantiable: {type(err).__name__}: {err}"
    if not isinstance(head, FaceHead):
        return f"not a FaceHead: {type(head).__name__}"
    return head


# --- main ---------------------------------------------------------------------------------------------------------
def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every head at every class count; returns the JSON-able results."""
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for num_classes in args.classes:
        for path in sorted(LOSS_DIR.glob("*.yaml")):
            torch.manual_seed(args.seed)
            head = build_head(path, args.dim, num_classes)
            if isinstance(head, str):
                skipped[path.stem] = head
                continue
            timing = time_interleaved(
                head, args.dim, num_classes, args.batch, args.repeats, args.warmup, args.seed, args.budget_s
            )
            gen = torch.Generator().manual_seed(args.seed + 1)
            # Cosines of random 512-d directions crowd around 0; spread them over [-1, 1] so every branch is checked.
            cos = torch.rand(args.batch, num_classes, generator=gen) * 2.0 - 1.0
            labels = torch.randint(0, num_classes, (args.batch,), generator=gen)
            diff = functional_max_diff(head, cos, labels)
            row = {"head": path.stem, "class": type(head).__name__, "classes": num_classes, **timing}
            row["functional_max_abs_diff"] = diff
            results.append(row)
            print(_format_row(row), flush=True)
    return {
        "machine": machine_info(),
        "shapes": {"batch": args.batch, "dim": args.dim, "classes": args.classes},
        "max_repeats": args.repeats,
        "budget_s": args.budget_s,
        "warmup": args.warmup,
        "results": results,
        "skipped": skipped,
    }


HEADER = (
    f"{'head':<19}{'C':>8}{'head ms':>10}{'floor ms':>10}{'ratio':>8}{'head IQR':>10}{'floor IQR':>10}"
    f"{'max|f-ref|':>12}{'n':>4}"
)


def _format_row(row: dict[str, Any]) -> str:
    diff = row["functional_max_abs_diff"]
    diff_text = "n/a" if diff is None else f"{diff:.1e}"
    return (
        f"{row['head']:<19}{row['classes']:>8}{row['head_ms']:>10.1f}{row['floor_ms']:>10.1f}{row['ratio']:>8.2f}"
        f"{row['head_ms_iqr']:>10.1f}{row['floor_ms_iqr']:>10.1f}{diff_text:>12}{row['repeats']:>4}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="class counts (default 10572 100000)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=None, help="timed iterations per head (default 15; quick 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--budget-s", type=float, default=20.0, help="stop timing a head after this many seconds (>= 5 repeats)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="C=10572 only, 3 repeats: a fast smoke check")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.classes is None:
        args.classes = [10572] if args.quick else [10572, 100000]
    if args.repeats is None:
        args.repeats = 3 if args.quick else 15
    if args.quick:
        args.warmup = min(args.warmup, 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    print(f"torch {info['torch']} on {info['cpu']}, {info['torch_threads']} threads; B={args.batch} D={args.dim}")
    print(HEADER)
    report = bench(args)
    for name, why in report["skipped"].items():
        print(f"skipped {name}: {why}")
    print(f"written {write_report(args.out, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
