"""Time the IJB-C 1:1 protocol from per-image embeddings, side by side with an InsightFace-style implementation.

A full-size IJB-C made of random 512-d embeddings with the real counts (users-and-scale.md §3): 469,375 faces,
23,124 templates (3,531 gallery templates of G1 + G2, one subject each, and 19,593 probe templates of those
subjects), several medias per template (stills and frame runs), 15,658,489 gallery-probe template pairs of which
19,557 genuine. Faces are a subject centre plus noise, so the TARs are neither 0 nor 1.

Measured on the same arrays, in one run:

1. **facetrain**: :func:`facetrain.evaluation.ijb.template_features` (N1D1) +
   :func:`~facetrain.evaluation.ijb.verification` (pair scores, exact ROC, both TARs, AUC). Goal: <= 60 s and
   <= 4 GB peak (the inputs plus the largest working set, measured with ``tracemalloc``) on this 2-core machine.
2. **InsightFace-style reference** (written below after ``eval_ijbc.py`` / ``ijb_11.py``): per-template Python loop
   with ``np.where(templates == t)``, per-media means, scores in 100,000-pair batches, ``sklearn.metrics.roc_curve``
   and the TPR at the nearest FPR. Goal: facetrain >= 3x faster, with identical TAR values (asserted).

The 1:N search (G1 and G2 against the probe templates) is timed too, for information.

Usage::

    python scripts/bench_ijb.py            # full size (minutes; the reference's loop dominates)
    python scripts/bench_ijb.py --quick    # 1/25 of every count (a smoke check)

Results are printed and written to ``bench_results/ijb.json`` (git-ignored) with machine info.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.metrics import roc_curve

from facetrain.evaluation.ijb import IJB_FARS, template_features, verification
from facetrain.evaluation.ijb_search import identification
from facetrain.utils.bench import machine_info, write_report

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench_results" / "ijb.json"
# IJB-C (users-and-scale.md §3): faces, G1 and G2 gallery templates, probe templates, pairs, genuine pairs.
FULL = {"faces": 469_375, "g1": 1_772, "g2": 1_759, "probes": 19_593, "pairs": 15_658_489, "genuine": 19_557}


def make_ijbc(rng: np.random.Generator, sizes: dict[str, int], dim: int = 512) -> dict[str, np.ndarray]:
    """Random embeddings and protocol arrays with IJB-C's counts (see the module docstring)."""
    n_gallery = sizes["g1"] + sizes["g2"]
    n_templates = n_gallery + sizes["probes"]
    # Templates 0..n_gallery-1 are the gallery (subject = template), the rest probes of a random gallery subject.
    subject = np.r_[np.arange(n_gallery), rng.integers(0, n_gallery, sizes["probes"])]
    # Faces per template: every template gets one, the rest spread unevenly (IJB-C: 1 to hundreds of frames).
    share = rng.gamma(0.7, size=n_templates)
    extra = rng.multinomial(sizes["faces"] - n_templates, share / share.sum())
    templates = np.repeat(np.arange(n_templates), 1 + extra)
    # Medias: 1 + Poisson(3) per template; faces fall on them unevenly (a still has one, a video many frames).
    n_medias = 1 + rng.poisson(3, n_templates)
    medias = templates * 1000 + (rng.random(templates.size) ** 2 * n_medias[templates]).astype(np.int64)
    centres = rng.standard_normal((n_gallery, dim), dtype=np.float32)
    features = rng.standard_normal((templates.size, dim), dtype=np.float32) * np.float32(6.0)
    features += centres[subject[templates]]
    faceness = rng.uniform(0.5, 1.0, templates.size).astype(np.float32)
    # Pairs: gallery x probe; genuine = a probe with its subject's gallery template.
    probes = np.arange(n_gallery, n_templates)
    mated = rng.choice(probes, size=sizes["genuine"], replace=False)
    n_imp = sizes["pairs"] - sizes["genuine"]
    imp_t1, imp_t2 = rng.integers(0, n_gallery, n_imp), rng.choice(probes, size=n_imp)
    same = subject[imp_t2] == imp_t1
    imp_t1[same] = (imp_t1[same] + 1) % n_gallery
    t1 = np.r_[subject[mated], imp_t1]
    t2 = np.r_[mated, imp_t2]
    labels = np.r_[np.ones(sizes["genuine"], np.int64), np.zeros(n_imp, np.int64)]
    order = rng.permutation(t1.size)
    return {
        "features": features, "templates": templates, "medias": medias, "faceness": faceness,
        "t1": t1[order], "t2": t2[order], "labels": labels[order], "subject": subject,
    }  # fmt: skip


# --- InsightFace-style reference (eval_ijbc.py / ijb_11.py, N1D1, flip already summed) -------------------------------
def insightface_template_features(img_feats, templates, medias):  # noqa: ANN001, ANN201
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count_template, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_norm_feats = img_feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_media_counts = np.unique(face_medias, return_counts=True)
        media_norm_feats = []
        for u, ct in zip(unique_medias, unique_media_counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_norm_feats += [face_norm_feats[ind_m]]
            else:
                media_norm_feats += [np.mean(face_norm_feats[ind_m], 0, keepdims=True)]
        media_norm_feats = np.array(media_norm_feats)
        template_feats[count_template] = np.sum(media_norm_feats, 0)
    template_norm_feats = template_feats / np.sqrt(np.sum(template_feats**2, -1, keepdims=True))
    return template_norm_feats, unique_templates


def insightface_verification(template_norm_feats, unique_templates, p1, p2):  # noqa: ANN001, ANN201
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    total_pairs = np.array(range(len(p1)))
    batchsize = 100000
    sublists = [total_pairs[i : i + batchsize] for i in range(0, len(p1), batchsize)]
    for s in sublists:
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        similarity_score = np.sum(feat1 * feat2, -1)
        score[s] = similarity_score.flatten()
    return score


def insightface_protocol(data: dict[str, np.ndarray]) -> dict[str, float]:
    img_input_feats = data["features"] * data["faceness"][:, None]  # use_detector_score, use_norm_score
    feats, unique = insightface_template_features(img_input_feats, data["templates"], data["medias"])
    score = insightface_verification(feats, unique, data["t1"], data["t2"])
    fpr, tpr, _ = roc_curve(data["labels"], score)
    return {f"{far:g}": float(tpr[np.argmin(np.abs(fpr - far))]) for far in IJB_FARS}


def facetrain_protocol(data: dict[str, np.ndarray]) -> dict[str, Any]:
    ids, feats = template_features(data["features"], data["templates"], data["medias"], faceness=data["faceness"])
    report = verification(ids, feats, data["t1"], data["t2"], data["labels"])
    return {"tar": {f"{far:g}": report[f"tar@far={far:g}"] for far in IJB_FARS},
            "strict": {f"{far:g}": report[f"tar@far={far:g}/strict"] for far in IJB_FARS},
            "auc": report["auc"], "ids": ids, "feats": feats}  # fmt: skip


def _timed(fn, *args):  # noqa: ANN001, ANN202
    """(seconds, peak bytes allocated above the start, result)."""
    tracemalloc.start()
    start = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/25 of every count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    sizes = {k: max(2, v // 25) for k, v in FULL.items()} if args.quick else dict(FULL)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    data = make_ijbc(rng, sizes)
    make_s = time.perf_counter() - t0
    input_bytes = data["features"].nbytes + sum(data[k].nbytes for k in ("templates", "medias", "faceness"))
    input_bytes += sum(data[k].nbytes for k in ("t1", "t2", "labels"))

    ours_s, ours_peak, ours = _timed(facetrain_protocol, data)
    ref_s, ref_peak, ref = _timed(insightface_protocol, data)
    # A FAR below 1 / impostors is undefined in facetrain (InsightFace still prints a number): compare the rest.
    compared = [k for k, v in ours["tar"].items() if v is not None]
    identical = bool(compared) and all(ours["tar"][k] == ref[k] for k in compared)
    n_gallery = sizes["g1"] + sizes["g2"]
    subject = data["subject"]
    galleries = {"G1": (np.arange(sizes["g1"]), subject[: sizes["g1"]]),
                 "G2": (np.arange(sizes["g1"], n_gallery), subject[sizes["g1"] : n_gallery])}  # fmt: skip
    probe = (np.arange(n_gallery, subject.size), subject[n_gallery:])
    search_s, search_peak, search = _timed(identification, ours["ids"], ours["feats"], galleries, probe)

    goal_bytes = 4 * 10**9
    results: dict[str, Any] = {
        "sizes": {**sizes, "templates": int(subject.size), "medias": int(np.unique(data["medias"]).size)},
        "make_data_s": make_s,
        "input_bytes": input_bytes,
        "facetrain": {
            "seconds": ours_s, "peak_extra_bytes": ours_peak, "peak_total_bytes": input_bytes + ours_peak,
            "goal_s": 60.0, "goal_bytes": goal_bytes,
            "meets_time_goal": ours_s <= 60.0, "meets_memory_goal": input_bytes + ours_peak <= goal_bytes,
            "tar": ours["tar"], "tar_strict": ours["strict"], "auc": ours["auc"],
        },
        "insightface_style": {"seconds": ref_s, "peak_extra_bytes": ref_peak, "tar": ref},
        "speedup": ref_s / ours_s, "goal_speedup": 3.0, "meets_speedup_goal": ref_s / ours_s >= 3.0,
        "identical_tar": identical, "compared_fars": compared,
        "identification_1n": {"seconds": search_s, "peak_extra_bytes": search_peak,
                              "values": {k: v for k, v in search.values.items() if v is not None}},
        "machine": {**machine_info(), "numpy": np.__version__, "sklearn": sklearn.__version__, "quick": args.quick},
    }  # fmt: skip
    f = results["facetrain"]
    print(f"IJB-C-size arrays: {sizes['faces']:,} faces, {subject.size:,} templates, {sizes['pairs']:,} pairs "
          f"(made in {make_s:.1f} s; inputs {input_bytes / 1e9:.2f} GB)")  # fmt: skip
    total_gb = f["peak_total_bytes"] / 1e9
    print(f"{'facetrain template_features + verification':<46} {ours_s:>8.2f} s  peak {total_gb:.2f} GB"
          f"  (goals 60 s / 4 GB: {f['meets_time_goal']} / {f['meets_memory_goal']})")  # fmt: skip
    print(f"{'InsightFace-style loop + 100k batches':<46} {ref_s:>8.2f} s  peak +{ref_peak / 1e9:.2f} GB")
    print(f"{'speed-up':<46} {ref_s / ours_s:>8.1f}x  (goal 3x: {ref_s / ours_s >= 3.0}); identical TAR: {identical}")
    print(f"{'1:N search (G1, G2)':<46} {search_s:>8.2f} s  peak +{search_peak / 1e9:.2f} GB")
    for far in IJB_FARS:
        key = f"{far:g}"
        tar, strict = ours["tar"][key], ours["strict"][key]
        print(f"  TAR@FAR={key:<7} facetrain {tar!s:<22} strict {strict!s:<22} ref {ref[key]}")
    print(f"wrote {write_report(args.out, results)}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
