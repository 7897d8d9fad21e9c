"""Time the verification metrics side by side with the straightforward implementations they replace.

Three measurements, each the median of several repeats, in one run:

1. **10-fold exact accuracy on 6,000 pairs** (LFW size): :func:`kfold_accuracy` with the exact threshold search
   (goal <= 20 ms), and the full :func:`verification_report` (k-fold + ROC + AUC + EER + TAR@FAR) for context.
2. **ROC + AUC + EER + TAR@FAR over 10 million pairs** (BLUFR's verification task has ~47 M per trial):
   :func:`roc_metrics` (goal <= 10 s), next to scikit-learn's ``roc_curve`` + ``roc_auc_score``.
3. **Grid mode vs InsightFace's loop** on the same 6,000 squared-L2 distances with ``np.arange(0, 4, 0.01)``:
   :func:`kfold_accuracy` with ``thresholds=`` against a faithful copy of ``calculate_roc``'s accuracy loop
   (``KFold(10, shuffle=False)``, first argmax, ``dist < t``); goal >= 50x faster with identical fold accuracies.

Usage::

    python scripts/bench_verification.py            # full sizes
    python scripts/bench_verification.py --quick    # 1 M ROC pairs, fewer repeats (a smoke check)

Results are printed and written to ``bench_results/verification.json`` (git-ignored) with machine info.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold

from facetrain.evaluation.verification import kfold_accuracy, roc_metrics, verification_report
from facetrain.utils.bench import machine_info, write_report

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench_results" / "verification.json"
GRID = np.arange(0, 4, 0.01)


def _median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    fn()  # warm-up (imports, caches)
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _lfw_like_cosines(rng: np.random.Generator, n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of an LFW-like set: 10 folds of n/20 same then n/20 different pairs, overlapping score ranges."""
    per = n_pairs // 20
    issame = np.tile(np.r_[np.ones(per, bool), np.zeros(per, bool)], 10)
    cos = np.where(issame, rng.normal(0.55, 0.15, issame.size), rng.normal(0.05, 0.15, issame.size))
    return np.clip(cos, -1, 1), issame


def insightface_accuracy_loop(thresholds: np.ndarray, dist: np.ndarray, issame: np.ndarray) -> np.ndarray:
    """InsightFace ``calculate_roc``'s accuracy part (insightface.md §2), loop for loop."""
    accuracy = np.zeros(10)
    for fold, (train, test) in enumerate(KFold(n_splits=10, shuffle=False).split(np.arange(len(dist)))):
        acc_train = np.zeros(len(thresholds))
        for i, threshold in enumerate(thresholds):
            predict = np.less(dist[train], threshold)
            tp = np.sum(np.logical_and(predict, issame[train]))
            tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(issame[train])))
            acc_train[i] = float(tp + tn) / dist[train].size
        best = np.argmax(acc_train)
        predict = np.less(dist[test], thresholds[best])
        tp = np.sum(np.logical_and(predict, issame[test]))
        tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(issame[test])))
        accuracy[fold] = float(tp + tn) / dist[test].size
    return accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 M ROC pairs and fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of the small measurements (default 15)")
    parser.add_argument("--roc-pairs", type=int, default=None, help="pairs for the ROC timing (default 10 M)")
    parser.add_argument("--roc-repeats", type=int, default=None, help="repeats of the ROC timing (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 15)
    roc_pairs = args.roc_pairs or (1_000_000 if args.quick else 10_000_000)
    roc_repeats = args.roc_repeats or (2 if args.quick else 3)
    loop_repeats = 1 if args.quick else 3
    rng = np.random.default_rng(args.seed)
    results: dict[str, Any] = {}

    # 1. exact 10-fold on 6,000 pairs
    cos, issame = _lfw_like_cosines(rng, 6000)
    t_kfold, kf = _median_seconds(lambda: kfold_accuracy(cos, issame), repeats)
    t_report, _ = _median_seconds(lambda: verification_report(cos, issame), repeats)
    results["kfold_exact_6000"] = {
        "median_s": t_kfold, "goal_s": 0.020, "meets_goal": t_kfold <= 0.020, "accuracy": kf["accuracy"],
        "full_report_median_s": t_report,
    }  # fmt: skip

    # 2. ROC over many pairs
    big_issame = rng.random(roc_pairs) < 0.01  # ~1 % genuine pairs, as in all-pairs protocols
    big = np.clip(np.where(big_issame, rng.normal(0.55, 0.15, roc_pairs), rng.normal(0.05, 0.15, roc_pairs)), -1, 1)
    fars = (1e-4, 1e-3, 1e-2)
    t_roc, roc = _median_seconds(lambda: roc_metrics(big, big_issame, fars=fars), roc_repeats)

    def sklearn_roc() -> float:
        roc_curve(big_issame, big, drop_intermediate=False)
        return float(roc_auc_score(big_issame, big))

    t_sk, sk_auc = _median_seconds(sklearn_roc, max(1, roc_repeats - 1))
    results["roc"] = {
        "pairs": roc_pairs, "median_s": t_roc, "goal_s": 10.0, "meets_goal": t_roc <= 10.0,
        "auc": roc["auc"], "sklearn_auc": sk_auc, "auc_abs_diff": abs(roc["auc"] - sk_auc),
        "tar": {f"{f:g}": roc[f"tar@far={f:g}"] for f in fars},
        "sklearn_roc_curve_plus_auc_median_s": t_sk, "speedup_vs_sklearn": t_sk / t_roc,
    }  # fmt: skip

    # 3. grid mode vs the InsightFace loop, same squared-L2 distances (2 - 2 cos for unit embeddings)
    dist = 2.0 - 2.0 * cos
    t_grid, grid_res = _median_seconds(
        lambda: kfold_accuracy(dist, issame, n_folds=10, thresholds=GRID, greater_is_same=False), repeats
    )
    t_loop, loop_acc = _median_seconds(lambda: insightface_accuracy_loop(GRID, dist, issame), loop_repeats)
    identical = grid_res["fold_accuracies"] == loop_acc.tolist()
    results["grid_vs_insightface_loop"] = {
        "pairs": int(dist.size), "thresholds": int(GRID.size), "grid_median_s": t_grid, "loop_median_s": t_loop,
        "speedup": t_loop / t_grid, "goal_speedup": 50.0, "meets_goal": t_loop / t_grid >= 50.0,
        "identical_fold_accuracies": identical, "accuracy": grid_res["accuracy"],
    }  # fmt: skip

    results["machine"] = {
        **machine_info(), "numpy": np.__version__, "sklearn": sklearn.__version__,
        "quick": args.quick, "repeats": repeats, "roc_repeats": roc_repeats,
    }  # fmt: skip

    k, r, g = results["kfold_exact_6000"], results["roc"], results["grid_vs_insightface_loop"]
    print(f"{'measurement':<48} {'median':>12} {'goal':>10}  ok")
    print(f"{'10-fold exact, 6,000 pairs':<48} {k['median_s'] * 1e3:>9.2f} ms {'20 ms':>10}  {k['meets_goal']}")
    print(f"{'  full report (k-fold + ROC/AUC/EER/TAR)':<48} {k['full_report_median_s'] * 1e3:>9.2f} ms")
    print(f"{f'ROC+AUC+EER+TAR@FAR, {roc_pairs:,} pairs':<48} {r['median_s']:>10.2f} s {'10 s':>10}  {r['meets_goal']}")
    print(
        f"{'  sklearn roc_curve + roc_auc_score':<48} {r['sklearn_roc_curve_plus_auc_median_s']:>10.2f} s"
        f"   (ours {r['speedup_vs_sklearn']:.1f}x faster, |dAUC| = {r['auc_abs_diff']:.1e})"
    )
    print(f"{'grid mode, 400 thresholds, 6,000 pairs':<48} {g['grid_median_s'] * 1e3:>9.2f} ms")
    print(f"{'  InsightFace calculate_roc loop':<48} {g['loop_median_s'] * 1e3:>9.2f} ms")
    print(
        f"{'  speed-up':<48} {g['speedup']:>11.1f}x {'50x':>10}  {g['meets_goal']}"
        f"   (identical fold accuracies: {g['identical_fold_accuracies']})"
    )
    print(f"wrote {write_report(args.out, results)}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
