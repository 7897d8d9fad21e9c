"""Identity-disjoint verification folds and the pairs drawn inside them (LFW View 2 ``pairs.txt``, YTF splits).

As in the official protocols (Huang et al., LFW tech. report 07-49, 2007; Wolf et al., CVPR 2011), each fold holds
its own people, and within a fold the same-identity and different-identity pairs are distinct and drawn without
replacement.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["N_FOLDS", "across_pairs", "fold_groups", "pair_capacity_problem", "within_pairs"]

N_FOLDS = 10


def fold_groups(rng: np.random.Generator, n_ids: int) -> list[np.ndarray]:
    """Splits identity indices into N_FOLDS disjoint random groups, each sorted."""
    return [np.sort(g) for g in np.array_split(rng.permutation(n_ids), N_FOLDS)]


def within_pairs(rng: np.random.Generator, ids: np.ndarray, per_id: int, count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct (identity, item a, item b) with a < b, sampled without replacement."""
    candidates = [(int(i), a, b) for i in ids for a, b in itertools.combinations(range(per_id), 2)]
    chosen = rng.choice(len(candidates), size=count, replace=False)
    return sorted(candidates[k] for k in chosen)


def across_pairs(rng: np.random.Generator, ids: np.ndarray, per_id: int, count: int) -> list[tuple[int, int, int, int]]:
    """``count`` distinct (identity 1, item, identity 2, item) with identity 1 < identity 2, without replacement.

    Indexes the product (identity pair) x item x item directly, so no candidate list is materialised.
    """
    id_pairs = list(itertools.combinations(ids.tolist(), 2))
    chosen = rng.choice(len(id_pairs) * per_id * per_id, size=count, replace=False)
    out = []
    for k in chosen.tolist():
        pair, rest = divmod(k, per_id * per_id)
        a, b = divmod(rest, per_id)
        out.append((id_pairs[pair][0], a, id_pairs[pair][1], b))
    return sorted(out)


def pair_capacity_problem(name: str, wanted: int, ids_per_fold: int, per_id: int) -> str | None:
    """Why the smallest fold cannot supply ``wanted`` distinct same- and different-identity pairs, or None if it can.

    Args:
        name: The setting that asks for ``wanted`` pairs (named in the message).
        wanted: Pairs of each kind per fold.
        ids_per_fold: Identities in the smallest fold.
        per_id: Items (images or videos) per identity.
    """
    same = ids_per_fold * per_id * (per_id - 1) // 2
    diff = ids_per_fold * (ids_per_fold - 1) // 2 * per_id * per_id
    if wanted <= min(same, diff):
        return None
    return (
        f"{name}={wanted} is more than the smallest fold can supply ({ids_per_fold} identities x {per_id} items "
        f"give {same} same-identity and {diff} different-identity pairs); lower it or add identities/items"
    )
