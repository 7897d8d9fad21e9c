"""How the verification protocols cut their pair lists into folds (NumPy only, importable by every layer)."""

from __future__ import annotations

import numpy as np

__all__ = ["fold_ids"]


def fold_ids(n_pairs: int, n_folds: int) -> np.ndarray:
    """Fold index of each pair when ``n_pairs`` pairs in file order form ``n_folds`` consecutive blocks.

    Block sizes follow ``np.array_split``: the first ``n_pairs % n_folds`` folds hold one pair more, which is also
    how scikit-learn's ``KFold(shuffle=False)`` (InsightFace's ``LFold``) splits.
    """
    if not 2 <= n_folds <= n_pairs:
        raise ValueError(f"n_folds must be in [2, {n_pairs}] for {n_pairs} pairs, got {n_folds}")
    return np.concatenate(
        [np.full(len(block), k) for k, block in enumerate(np.array_split(np.arange(n_pairs), n_folds))]
    )
