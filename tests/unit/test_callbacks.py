"""The evaluation callbacks on tiny on-disk LFW/YTF-format sets with a model whose embeddings are known exactly.

Images are lossless PNGs whose left and right halves are flat colours; the fake model's embedding of an image is the
per-channel mean of its left half and of its right half, minus 127.5 (6-D). So every embedding, and hence every
known answer below, follows from the colours written.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger
from sklearn.preprocessing import normalize
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from facetrain.callbacks.eval_sets import (
    BinVerification,
    OpenSetIdentification,
    PairVerification,
    SetEvaluation,
    VideoBinVerification,
    VideoVerification,
)
from facetrain.data.binset import load_bin
from facetrain.data.convert import lfw_pairs_to_bin, ytf_splits_to_bin
from facetrain.data.protocols import write_lfw_pairs, write_ytf_splits
from facetrain.evaluation.embed import embed_images
from facetrain.evaluation.embedding_files import read_embeddings
from facetrain.evaluation.plots import read_curve_csv, subsample_curve, write_curve_csv
from facetrain.evaluation.protocols import PairProtocol
from facetrain.evaluation.sets import PairSet, lfw_pairs
from facetrain.evaluation.verification import UNDEFINED, kfold_accuracy, mean_subtracted_scorer
from facetrain.tasks.evaluate import evaluate, load_embedding_model
from facetrain.utils.instantiate import MOVED_TARGETS, instantiate_named
from facetrain.utils.rules import ConfigError
from facetrain.utils.schema import validate_config
from tests.inference_helpers import make_checkpoint, run_config

ROOT = Path(__file__).resolve().parents[2]


class HalvesModel(torch.nn.Module):
    """embed(images) = [mean RGB of the left half, mean RGB of the right half] - 127.5; counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        w = images.shape[3] // 2
        return torch.cat([images[..., :w].mean(dim=(2, 3)), images[..., w:].mean(dim=(2, 3))], dim=1) - 127.5


def _write_image(path: Path, vector: np.ndarray) -> None:
    """8x8 PNG: left half RGB = vector[:3], right half RGB = vector[3:]."""
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4], image[:, 4:] = vector[:3], vector[3:]
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))  # OpenCV writes BGR


def _embedding(vector: np.ndarray) -> np.ndarray:
    return np.asarray(vector, np.float64) - 127.5


NAMES = ["Ann_Ash", "Bob_Bay", "Cid_Cole", "Dee_Dunn", "Eve_Ely", "Fay_Fox"]


@pytest.fixture(scope="module")
def lfw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six identities x 3 images; identity i = 128 + 100 e_i plus small noise (perfectly separable)."""
    root = tmp_path_factory.mktemp("lfw")
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):
        for n in range(1, 4):
            vector = 128 + 100 * np.eye(6, dtype=int)[i] + rng.integers(-3, 4, 6)
            _write_image(root / "lfw" / name / f"{name}_{n:04d}.png", vector.astype(np.uint8))
    folds = [
        ([(NAMES[0], 1, 2), (NAMES[1], 1, 3)], [(NAMES[0], 3, NAMES[2], 1), (NAMES[1], 2, NAMES[3], 2)]),
        ([(NAMES[4], 1, 2), (NAMES[5], 2, 3)], [(NAMES[4], 3, NAMES[5], 1), (NAMES[2], 2, NAMES[3], 3)]),
    ]
    write_lfw_pairs(root / "pairs.txt", folds)
    return root


def _pairs(lfw: Path, tmp_path: Path, **kwargs: object) -> PairVerification:
    kwargs = {"dirpath": str(tmp_path), **kwargs}
    return PairVerification("lfw", root=str(lfw / "lfw"), pairs_file=str(lfw / "pairs.txt"), ext="png", **kwargs)


def test_pair_verification_results_options_and_undefined(lfw: Path, tmp_path: Path) -> None:
    callback = _pairs(lfw, tmp_path)
    model = HalvesModel()
    results = callback.evaluate(model)
    assert model.calls == 1  # 16 distinct images, one batch: every metric and curve reuses these embeddings
    assert callback.embeddings.shape == (16, 6)
    np.testing.assert_allclose(
        callback.report["scores"], callback.protocol.pair_scores(callback.embeddings, callback.set)
    )
    assert results["lfw/acc"] == 1.0 and results["lfw/auc"] == 1.0 and results["lfw/eer"] == 0.0
    # 4 impostor pairs: the smallest measurable FAR is 0.25, so every default FAR is undefined, with a reason.
    for far in ("0.0001", "0.001", "0.01"):
        assert results[f"lfw/tar@far={far}"] == UNDEFINED
        assert "below 1/4" in results[f"lfw/tar@far={far}_reason"]
    assert {k: results[f"lfw/{k}"] for k in ("flip", "score", "mean_subtraction", "thresholds", "pairs")} == {
        "flip": "none", "score": "cosine", "mean_subtraction": False, "thresholds": "exact", "pairs": 8,
    }  # fmt: skip
    json.dumps(results)  # JSON-ready: no NaN, no numpy scalars
    scalars = callback.scalars()
    assert "val/lfw/acc" in scalars and not any("tar@far" in k for k in scalars)
    assert all(isinstance(v, float) and np.isfinite(v) for v in scalars.values())


def test_bin_pack_gives_the_same_results_as_the_image_tree(lfw: Path, tmp_path: Path) -> None:
    pack = tmp_path / "lfw.bin"
    lfw_pairs_to_bin(lfw / "lfw", lfw / "pairs.txt", pack, ext="png", show_progress=False)
    for options in ({}, {"flip": "sum", "score": "l2"}, {"mean_subtraction": True}):
        tree = _pairs(lfw, tmp_path, **options).evaluate(HalvesModel())
        model = HalvesModel()
        callback = BinVerification("lfw", path=str(pack), n_folds=2, dirpath=str(tmp_path), **options)
        packed = callback.evaluate(model)
        assert packed == tree
        callback.evaluate(model)
        assert len(callback.images().cache) == 16  # decoded once (uint8), reused by the second evaluation
        assert all(a.dtype == np.uint8 for a in callback.images().cache.values())
    with pytest.raises(ValueError, match=r"eval\.lfw\.n_folds must be in \[2, 8\]"):
        BinVerification("lfw", path=str(pack))


def test_bin_pack_with_an_odd_sized_image_evaluates(lfw: Path, tmp_path: Path) -> None:
    # A pack image that is not the evaluation size used to fail only at the first evaluation, with torch's
    # "stack expects each tensor to be equal size"; it is now resized when decoded, as InsightFace does.
    pack = tmp_path / "lfw.bin"
    lfw_pairs_to_bin(lfw / "lfw", lfw / "pairs.txt", pack, ext="png", show_progress=False)
    images, issame = pickle.loads(pack.read_bytes())
    image = cv2.imdecode(np.frombuffer(images[5], np.uint8), cv2.IMREAD_COLOR)
    images[5] = cv2.imencode(".png", cv2.resize(image, (16, 16), interpolation=cv2.INTER_NEAREST))[1].tobytes()
    odd = tmp_path / "odd.bin"
    odd.write_bytes(pickle.dumps((images, issame)))
    reference = _pairs(lfw, tmp_path)
    tree = reference.evaluate(HalvesModel())
    callback = BinVerification("lfw", path=str(odd), n_folds=2, dirpath=str(tmp_path))
    assert load_bin(odd).image_size == (8, 8)
    results = callback.evaluate(HalvesModel())
    assert results["lfw/acc"] == tree["lfw/acc"] == 1.0
    # Bicubic resizing back to 8x8 blurs the one column where the two halves meet: scores move only slightly.
    np.testing.assert_allclose(callback.report["scores"], reference.report["scores"], atol=0.01)


def test_eval_images_are_decoded_once_per_run(lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import facetrain.evaluation.embed as embed_module

    reads: list[str] = []
    real = embed_module.read_rgb
    monkeypatch.setattr(embed_module, "read_rgb", lambda p: reads.append(str(p)) or real(p))
    callback = _pairs(lfw, tmp_path)
    first = callback.evaluate(HalvesModel())
    assert callback.evaluate(HalvesModel()) == first
    assert len(reads) == 16  # 16 distinct images, two evaluations
    uncached = _pairs(lfw, tmp_path, cache=False)
    assert uncached.evaluate(HalvesModel()) == first


def test_pair_verification_options_change_the_scores(lfw: Path, tmp_path: Path) -> None:
    callback = _pairs(lfw, tmp_path, flip="sum", score="l2", mean_subtraction=True, threshold_grid=[0, 4, 0.01])
    model = HalvesModel()
    results = callback.evaluate(model)
    assert model.calls == 2  # original and mirrored batch
    assert results["lfw/flip"] == "sum" and results["lfw/score"] == "l2" and results["lfw/mean_subtraction"] is True
    assert results["lfw/thresholds"] == "grid of 400 from 0 to 3.99"
    emb = callback.embeddings
    scorer = mean_subtracted_scorer(emb[callback.set.left], emb[callback.set.right], "l2")
    expected = kfold_accuracy(scorer, callback.set.pairs.issame, greater_is_same=False, folds=callback.set.pairs.folds)
    np.testing.assert_allclose(callback.report["scores"], expected["scores"])
    assert results["lfw/acc"] == 1.0


@pytest.mark.parametrize("mode", ["none", "sum", "concat"])
def test_flip_fusion_modes(tmp_path: Path, mode: str) -> None:
    vector = np.array([200, 60, 90, 30, 170, 140], np.uint8)
    _write_image(tmp_path / "x.png", vector)
    got = embed_images(HalvesModel().embed, [str(tmp_path / "x.png")], None, torch.device("cpu"), flip=mode)[0]
    e = _embedding(vector)
    mirrored = np.r_[e[3:], e[:3]]  # a horizontal flip swaps the flat halves
    expected = {
        "none": normalize(e[None])[0],
        "sum": normalize((e + mirrored)[None])[0],
        "concat": normalize(np.r_[normalize(e[None])[0], normalize(mirrored[None])[0]][None])[0],
    }[mode]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_bad_options_fail_before_reading_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing")
    for kwargs, message in [
        ({"flip": "mirror"}, "flip must be one of"),
        ({"score": "dot"}, r"eval\.lfw\.score='dot' is invalid: it must be one of"),
        ({"fars": [0.0]}, r"eval\.lfw\.fars=\[0\.0\] is invalid: .* \(0, 1\]"),
        ({"threshold_grid": [1.0]}, "start, stop, step"),
    ]:
        with pytest.raises(ValueError, match=message):
            PairVerification("lfw", root=missing, pairs_file=missing, **kwargs)


def test_curves_are_written_and_logged(lfw: Path, tmp_path: Path) -> None:
    callback = _pairs(lfw, tmp_path, dirpath=None)
    callback.evaluate(HalvesModel())
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    trainer = SimpleNamespace(loggers=[logger], global_step=7, default_root_dir=str(tmp_path / "run"))
    callback._publish(trainer)
    logger.experiment.flush()
    curves = tmp_path / "run" / "curves"
    assert sorted(p.name for p in curves.iterdir()) == [
        "lfw_roc.csv",
        "lfw_roc.png",
        "lfw_scores.csv",
        "lfw_scores.png",
    ]
    roc = read_curve_csv(curves / "lfw_roc.csv")
    assert list(roc) == ["fpr", "tpr", "threshold"] and roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0
    hist = read_curve_csv(curves / "lfw_scores.csv")
    assert hist["genuine"].sum() == 4 and hist["impostor"].sum() == 4
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"val/lfw/roc", "val/lfw/scores"} <= set(events.Tags()["images"])
    # Standalone evaluation writes the same files wherever it is asked to.
    assert len(callback.write_curves(tmp_path / "elsewhere")) == 4


def test_large_roc_is_subsampled_at_its_operating_points() -> None:
    fpr = np.r_[0.0, np.arange(1, 1_000_001) / 1_000_000]
    keep = subsample_curve(fpr, max_points=500)
    assert keep[0] == 0 and keep[-1] == fpr.size - 1 and keep.size <= 500
    assert np.all(np.diff(keep) > 0) and 1 in keep  # the lowest non-zero FAR survives
    assert np.array_equal(subsample_curve(fpr[:100]), np.arange(100))


# --- YTF -------------------------------------------------------------------------------------------------------------
VIDEOS = [f"{name}/{video}" for name in NAMES[:4] for video in (1, 2)]
FRAMES = (1, 2, 10)  # frame 10 sorts after 2 by number, before it by name


@pytest.fixture(scope="module")
def ytf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Four identities x 2 videos x frames 1, 2, 10 with random colours; returns the root and the frame vectors."""
    root = tmp_path_factory.mktemp("ytf")
    rng = np.random.default_rng(1)
    vectors = {}
    for video in VIDEOS:
        frames = rng.integers(30, 226, size=(len(FRAMES), 6)).astype(np.uint8)
        vectors[video] = _embedding(frames)  # rows in frame-number order
        number = video.split("/")[1]
        for frame, vector in zip(FRAMES, frames):
            _write_image(root / "db" / video / f"aligned_detect_{number}.{frame}.png", vector)
    rows = [
        (1, 1, VIDEOS[0], VIDEOS[1], 1), (1, 2, VIDEOS[0], VIDEOS[2], 0),
        (1, 3, VIDEOS[2], VIDEOS[3], 1), (1, 4, VIDEOS[1], VIDEOS[4], 0),
        (2, 1, VIDEOS[4], VIDEOS[5], 1), (2, 2, VIDEOS[5], VIDEOS[6], 0),
        (2, 3, VIDEOS[6], VIDEOS[7], 1), (2, 4, VIDEOS[3], VIDEOS[7], 0),
    ]  # fmt: skip
    write_ytf_splits(root / "splits.txt", rows)
    return root, vectors


def _video(ytf: tuple[Path, dict], tmp_path: Path, **kwargs: object) -> VideoVerification:
    root, _ = ytf
    return VideoVerification(
        "ytf",
        root=str(root / "db"),
        splits_file=str(root / "splits.txt"),
        dirpath=str(tmp_path),
        **{"n_splits": 2, **kwargs},
    )


def _brute_force_video_score(a: np.ndarray, b: np.ndarray, aggregate: str, score: str, k: int = 2) -> float:
    a, b = normalize(a), normalize(b)
    if aggregate == "mean_embedding":
        va, vb = normalize(a.mean(0)[None])[0], normalize(b.mean(0)[None])[0]
        return float(va @ vb) if score == "cosine" else float(np.sum((va - vb) ** 2))
    if aggregate == "first_k":
        a, b = a[:k], b[:k]
    pairs = [(x @ y) if score == "cosine" else np.sum((x - y) ** 2) for x, y in itertools.product(a, b)]
    return float(np.mean(pairs))


@pytest.mark.parametrize(
    ("aggregate", "score"),
    [("mean_embedding", "cosine"), ("mean_pair_cosine", "cosine"), ("first_k", "cosine"), ("mean_pair_cosine", "l2")],
)
def test_video_aggregation_known_answers(ytf: tuple[Path, dict], tmp_path: Path, aggregate: str, score: str) -> None:
    _, vectors = ytf
    callback = _video(ytf, tmp_path, aggregate=aggregate, k=2, score=score)
    results = callback.evaluate(HalvesModel())
    expected = [
        _brute_force_video_score(vectors[a], vectors[b], aggregate, score)
        for a, b in zip(callback.set.pairs.left, callback.set.pairs.right)
    ]
    np.testing.assert_allclose(callback.report["scores"], expected, atol=1e-5)
    assert results["ytf/aggregate"] == aggregate
    if aggregate == "first_k":
        assert results["ytf/k"] == 2 and "ytf/frames_per_video" not in results
        assert all(not p.endswith(".10.png") for p in callback.paths)  # first two by frame number: 1 and 2
    else:
        assert results["ytf/frames_per_video"] == "all" and len(callback.paths) == 8 * 3


def test_video_aggregations_differ_and_sampling(ytf: tuple[Path, dict], tmp_path: Path) -> None:
    scores = {}
    for aggregate in ("mean_embedding", "mean_pair_cosine"):
        callback = _video(ytf, tmp_path, aggregate=aggregate)
        callback.evaluate(HalvesModel())
        scores[aggregate] = callback.report["scores"]
    # The mean frame-pair cosine is |mean a| |mean b| times the mean-embedding cosine, with norms <= 1.
    assert np.all(np.abs(scores["mean_pair_cosine"]) <= np.abs(scores["mean_embedding"]) + 1e-12)
    assert not np.allclose(scores["mean_pair_cosine"], scores["mean_embedding"])
    sampled = _video(ytf, tmp_path, frames_per_video=2)
    assert len(sampled.paths) == 8 * 2 and sum(p.endswith(".10.png") for p in sampled.paths) == 8  # frames 1 and 10
    assert sampled.evaluate(HalvesModel())["ytf/frames_per_video"] == 2
    with pytest.raises(ValueError, match="set frames_per_video=null"):
        _video(ytf, tmp_path, aggregate="first_k", frames_per_video=2)
    with pytest.raises(ValueError, match="aggregate='median' is invalid: it must be one of"):
        _video(ytf, tmp_path, aggregate="median")


def test_video_mean_subtraction_fits_training_videos(ytf: tuple[Path, dict], tmp_path: Path) -> None:
    _, vectors = ytf
    callback = _video(ytf, tmp_path, aggregate="mean_pair_cosine", mean_subtraction=True)
    results = callback.evaluate(HalvesModel())
    assert results["ytf/mean_subtraction"] is True
    train = callback.set.pairs.folds == 1  # scores of split 1 come from the mean of split 2's videos
    videos = sorted(set(np.asarray(callback.set.pairs.left)[train]) | set(np.asarray(callback.set.pairs.right)[train]))
    mu = normalize(np.concatenate([vectors[v] for v in videos])).mean(0)
    for i in np.flatnonzero(~train):
        a, b = (
            normalize(normalize(vectors[v]) - mu) for v in (callback.set.pairs.left[i], callback.set.pairs.right[i])
        )
        assert callback.report["scores"][i] == pytest.approx(np.mean(a @ b.T), abs=1e-5)


def test_video_bin_pack_gives_the_same_results_as_the_frame_folders(ytf: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = ytf
    pack = tmp_path / "ytf.bin"
    ytf_splits_to_bin(root / "db", root / "splits.txt", pack, n_splits=2, show_progress=False)
    for options in (
        {},
        {"aggregate": "first_k", "k": 2},
        {"frames_per_video": 2, "flip": "sum"},
        {"aggregate": "mean_pair_cosine", "score": "l2", "mean_subtraction": True},
    ):
        tree = _video(ytf, tmp_path, **options).evaluate(HalvesModel())
        callback = VideoBinVerification("ytf", path=str(pack), n_splits=2, dirpath=str(tmp_path), **options)
        assert callback.evaluate(HalvesModel()) == tree, options
        frames = 8 * (2 if {"k", "frames_per_video"} & options.keys() else 3)  # 8 distinct videos, embedded once
        assert len(callback.images().cache) == frames and len(callback.paths) == frames
    with pytest.raises(ValueError, match=r"eval\.ytf\.n_splits must be in \[2, 8\]"):
        VideoBinVerification("ytf", path=str(pack))


def test_bin_eval_configs_validate_and_build(compose_cfg, lfw: Path, ytf: tuple[Path, dict], tmp_path: Path) -> None:
    """``eval=[lfw_bin,ytf_bin]`` as a user writes it: the schema check of train() passes, the callbacks build."""
    lfw_pack, ytf_pack = tmp_path / "lfw.bin", tmp_path / "ytf.bin"
    lfw_pairs_to_bin(lfw / "lfw", lfw / "pairs.txt", lfw_pack, ext="png", show_progress=False)
    ytf_splits_to_bin(ytf[0] / "db", ytf[0] / "splits.txt", ytf_pack, n_splits=2, show_progress=False)
    cfg = compose_cfg(
        "eval=[lfw_bin,ytf_bin]", f"eval.lfw_bin.path={lfw_pack}", "+eval.lfw_bin.n_folds=2",
        f"eval.ytf_bin.path={ytf_pack}", "eval.ytf_bin.n_splits=2", "eval.ytf_bin.aggregate=first_k",
        "eval.ytf_bin.k=2",
    )  # fmt: skip
    validate_config(cfg)
    callbacks = instantiate_named(cfg.eval)
    assert [type(c) for c in callbacks] == [BinVerification, VideoBinVerification]
    assert len(callbacks[1].paths) == 8 * 2
    OmegaConf.set_struct(cfg, False)
    cfg.eval.ytf_bin.frames_per_vid = 2  # a typo of a key the pack callback inherits from VideoPairVerification
    with pytest.raises(ValueError, match="eval.ytf_bin.frames_per_vid.*did you mean eval.ytf_bin.frames_per_video"):
        validate_config(cfg)


# --- open set -------------------------------------------------------------------------------------------------------
def test_open_set_generic_protocol(lfw: Path, tmp_path: Path) -> None:
    callback = OpenSetIdentification(
        "openset", root=str(lfw / "lfw"), trials=3, fars=[0.2, 0.01], ver_far=0.01, dirpath=str(tmp_path)
    )
    model = HalvesModel()
    results = callback.evaluate(model)
    assert model.calls == 1 and callback.embeddings.shape == (18, 6)  # every image once, shared by the 3 trials
    # Separable identities: every genuine probe is found above any threshold the 9 impostor probes allow.
    assert results["openset/dir@far=0.2,rank=1"] == 1.0
    assert results["openset/dir@far=0.2,rank=1_mean_minus_std"] == 1.0
    assert results["openset/rank1"] == 1.0 and results["openset/vr@far=0.01"] == 1.0
    assert results["openset/dir@far=0.01,rank=1"] == UNDEFINED  # 9 impostor probes: smallest FAR 1/9
    assert "below 1/9" in results["openset/dir@far=0.01,rank=1_reason"]
    assert results["openset/impostor_probes"] == 9.0 and results["openset/gallery"] == 3.0
    assert results["openset/protocol"] == "generic" and results["openset/seed"] == 0
    written = callback.write_curves()
    assert sorted(p.name for p in written) == ["openset_dir_far.csv", "openset_dir_far.png"]
    assert "val/openset/dir@far=0.01,rank=1" not in callback.scalars()


def test_open_set_blufr_lists(lfw: Path, tmp_path: Path) -> None:
    def write(name: str, trials: list[list[str]]) -> None:
        lines = [str(len(trials))]
        for trial in trials:
            lines += [str(len(trial))] + [f"{i + 1}, {f}" for i, f in enumerate(trial)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")

    files = {name: [f"{name}_{n:04d}.png" for n in range(1, 4)] for name in NAMES}
    write("gallery_set.txt", [[files[NAMES[0]][0], files[NAMES[1]][0]], [files[NAMES[2]][0], files[NAMES[3]][0]]])
    write("probe_set.txt", [files[NAMES[0]][1:] + files[NAMES[4]], files[NAMES[2]][1:] + files[NAMES[5]]])
    callback = OpenSetIdentification(
        "openset", root=str(lfw / "lfw"), blufr_dir=str(tmp_path), fars=[0.5], ver_far=None
    )
    results = callback.evaluate(HalvesModel())
    assert results["openset/protocol"] == "blufr" and results["openset/trials"] == 2.0
    assert results["openset/dir@far=0.5,rank=1"] == 1.0 and results["openset/genuine_probes"] == 2.0
    (tmp_path / "gallery_set.txt").write_text("1\n1\n1, Nobody_Here_0001.png\n")
    (tmp_path / "probe_set.txt").write_text("1\n1\n1, Nobody_Here_0002.png\n")
    with pytest.raises(FileNotFoundError, match="BLUFR images are missing"):
        OpenSetIdentification("openset", root=str(lfw / "lfw"), blufr_dir=str(tmp_path))


# --- scripts/plot_roc.py ----------------------------------------------------------------------------------------------
def _plot_roc_main() -> Callable[[list[str]], int]:
    spec = importlib.util.spec_from_file_location("plot_roc", ROOT / "scripts" / "plot_roc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_plot_roc_overlays_runs_and_multirun_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    curve = {"fpr": [0.0, 0.01, 0.1, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0], "threshold": [np.inf, 0.5, 0.3, -0.2]}
    write_curve_csv(tmp_path / "run_a" / "curves" / "lfw_roc.csv", curve)
    write_curve_csv(tmp_path / "run_a" / "curves" / "ytf_roc.csv", curve)
    for job in ("0", "1"):
        write_curve_csv(tmp_path / "multi" / job / "curves" / "lfw_roc.csv", curve)
        (tmp_path / "multi" / job / ".hydra").mkdir(parents=True)
        (tmp_path / "multi" / job / ".hydra" / "overrides.yaml").write_text(f"- loss=head{job}\n- paths.x=1\n")
    main = _plot_roc_main()
    out = tmp_path / "fig.png"
    assert main([str(tmp_path / "run_a"), str(tmp_path / "multi"), "--set", "lfw", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "run_a [lfw]" in printed and "0: loss=head0 [lfw]" in printed and "1: loss=head1 [lfw]" in printed
    assert "ytf" not in printed
    assert main([str(tmp_path / "multi" / "0" / ".hydra"), "--out", str(out)]) == 1


def test_evaluation_embeds_in_the_trainers_precision(lfw: Path, tmp_path: Path) -> None:
    """Under trainer=gpu (bf16-mixed) evaluation runs under the same autocast as training; 32-true runs none."""

    class AutocastProbe(HalvesModel):
        def embed(self, images: torch.Tensor) -> torch.Tensor:
            self.autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
            return super().embed(images)

    for precision, expected in [("bf16-mixed", (True, torch.bfloat16)), ("32-true", (False, None))]:
        trainer = pl.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False)
        model = AutocastProbe()
        _pairs(lfw, tmp_path).evaluate(model, trainer)
        assert model.autocast[0] is expected[0]
        if expected[1] is not None:
            assert model.autocast[1] == expected[1]


# --- embeddings files and the generic (set, protocol) config --------------------------------------------------------
def test_embeddings_are_written_once_per_evaluation_and_read_back(lfw: Path, tmp_path: Path) -> None:
    callback = _pairs(lfw, tmp_path / "run", save_curves=False)
    first = callback.evaluate(HalvesModel())
    callback._publish(SimpleNamespace(loggers=[], global_step=3, default_root_dir=None))
    stored = tmp_path / "run" / "embeddings"
    assert sorted(p.name for p in stored.iterdir()) == ["lfw.npy", "lfw.txt"]
    assert (stored / "lfw.txt").read_text().splitlines() == [str(p) for p in callback.paths]
    embeddings = read_embeddings(stored, "lfw", callback.paths)
    assert embeddings.dtype == callback.embeddings.dtype and np.array_equal(embeddings, callback.embeddings)
    other = _pairs(lfw, tmp_path, score="l2")  # other protocol options, no model: from the stored rows
    assert other.evaluate_embeddings(embeddings)["lfw/acc"] == first["lfw/acc"]
    assert other.results["lfw/score"] == "l2"
    swapped = callback.paths[[0, 2, 1, *range(3, len(callback.paths))]]  # the set's order changed since
    with pytest.raises(ValueError, match=r"lfw\.txt, line 2: image .*_0002\.png', but eval\.lfw lists .*_0003\.png'"):
        read_embeddings(stored, "lfw", swapped)
    with pytest.raises(FileNotFoundError, match="ytf.npy is missing"):
        read_embeddings(stored, "ytf", callback.paths)


def test_evaluate_writes_embeddings_and_recomputes_the_metrics_from_them(
    lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import facetrain.tasks.evaluate as evaluate_module

    def compose_evaluate(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("evaluate", overrides=[
                f"paths.root_dir={tmp_path}", "eval=[lfw]", f"eval.lfw.root={lfw / 'lfw'}",
                f"eval.lfw.pairs_file={lfw / 'pairs.txt'}", "+eval.lfw.ext=png", "eval.lfw.source=null",
                "eval.lfw.transform=null", "eval.lfw.save_curves=false", *overrides,
            ])  # fmt: skip
        GlobalHydra.instance().clear()
        return cfg

    model = HalvesModel()  # stands in for the checkpoint's network
    monkeypatch.setattr(evaluate_module, "_model_metrics", lambda cfg, path, evaluators: (model, {"ckpt_path": "x"}))
    (tmp_path / "x.ckpt").touch()
    embedded = evaluate(compose_evaluate(f"paths.output_dir={tmp_path / 'first'}", f"ckpt_path={tmp_path / 'x.ckpt'}"))
    assert model.calls == 1 and sorted(p.name for p in (tmp_path / "first" / "embeddings").iterdir()) == [
        "lfw.npy", "lfw.txt",
    ]  # fmt: skip
    stored = tmp_path / "first" / "embeddings"
    cfg = compose_evaluate(f"paths.output_dir={tmp_path / 'again'}", f"embeddings_dir={stored}")
    metrics = evaluate(cfg)
    assert model.calls == 1  # not embedded again
    lfw_metrics = {k: v for k, v in metrics.items() if k.startswith("lfw/")}
    assert lfw_metrics == {k: v for k, v in embedded.items() if k.startswith("lfw/")} and lfw_metrics
    assert metrics["embeddings_dir"] == str(stored.resolve()) and not (tmp_path / "again" / "embeddings").exists()
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["lfw/acc"] == metrics["lfw/acc"]
    cfg.ckpt_path = str(tmp_path / "x.ckpt")  # two inputs: refused before anything is read
    with pytest.raises(ValueError, match="exactly one of ckpt_path=.*embeddings_dir="):
        evaluate(cfg)


def test_generic_evaluation_config_equals_the_format_entry(lfw: Path, tmp_path: Path) -> None:
    """A new set is a loader + a protocol: the nested config builds the same evaluation as eval/lfw's entry."""
    node = OmegaConf.create({"lfw": {
        "_target_": "facetrain.callbacks.evaluation.Evaluation", "name": "lfw", "dirpath": str(tmp_path),
        "set": {"_target_": "facetrain.evaluation.sets.lfw_pairs", "_partial_": True, "root": str(lfw / "lfw"),
                "pairs_file": str(lfw / "pairs.txt"), "ext": "png"},
        "protocol": {"_target_": "facetrain.evaluation.protocols.PairProtocol", "score": "l2", "name": "lfw"},
    }})  # fmt: skip
    validate_config(node)
    (generic,) = instantiate_named(node)
    assert generic.evaluate(HalvesModel()) == _pairs(lfw, tmp_path, score="l2").evaluate(HalvesModel())
    node.lfw.protocol.scor = "l2"
    with pytest.raises(ValueError, match=r"lfw\.protocol\.scor is not a parameter.*did you mean lfw\.protocol\.score"):
        validate_config(node)


# --- the eval/ entries: keys from the set loader, the protocol and the callback ---------------------------------------
def test_entry_keys_are_the_loader_protocol_and_callback_parameters(lfw: Path, tmp_path: Path) -> None:
    """An entry declares a loader and a protocol class; a key goes to whichever of the three takes it."""
    callback = _pairs(lfw, tmp_path, score="l2", every_n_epochs=3)  # ext -> loader, score -> protocol, rest -> callback
    assert callback.protocol.score == "l2" and callback.every_n_epochs == 3
    assert len(callback.paths) == 16  # the .png images were found: ext reached the loader
    with pytest.raises(TypeError, match=r"eval\.lfw \(PairVerification\): .*unexpected keyword argument 'scor'"):
        _pairs(lfw, tmp_path, scor="l2")
    with pytest.raises(TypeError, match=r"eval\.lfw \(PairVerification\): missing a required argument: 'pairs_file'"):
        PairVerification("lfw", root=str(lfw / "lfw"))


def test_a_new_entry_is_a_loader_and_a_protocol(lfw: Path, tmp_path: Path) -> None:
    def png_pairs(root: str, pairs_file: str, name: str = "png") -> PairSet:
        return lfw_pairs(root, pairs_file, ext="png", name=name)

    class PngPairs(SetEvaluation):
        load = png_pairs
        protocol_type = PairProtocol

    built = PngPairs("lfw", root=str(lfw / "lfw"), pairs_file=str(lfw / "pairs.txt"), score="l2", dirpath=str(tmp_path))
    assert built.evaluate(HalvesModel()) == _pairs(lfw, tmp_path, score="l2").evaluate(HalvesModel())

    def clashing(root: str, score: str = "x", name: str = "x") -> PairSet:
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="key 'score' belongs to both the set and protocol"):
        type("Clash", (SetEvaluation,), {"load": clashing, "protocol_type": PairProtocol})


def test_a_moved_target_is_refused_with_its_new_place(compose_cfg) -> None:
    """A config naming a callback where it lived before facetrain.callbacks (a copied old run config) says where."""
    cfg = compose_cfg("eval=[lfw]")
    OmegaConf.set_struct(cfg, False)
    cfg.eval.lfw._target_ = "facetrain.evaluation.callbacks.PairVerification"
    moved = r"eval\.lfw\._target_='facetrain\.evaluation\.callbacks\.PairVerification' has moved: write _target_: "
    with pytest.raises(ConfigError, match=moved + r"facetrain\.callbacks\.eval_sets\.PairVerification"):
        validate_config(cfg)
    with pytest.raises(
        ValueError, match=r"lfw\._target_=.* has moved: write _target_: facetrain\.callbacks\.eval_sets"
    ):
        instantiate_named(cfg.eval)


def test_a_checkpoint_written_before_the_move_still_evaluates(tmp_path: Path) -> None:
    """evaluate.py rebuilds only the backbone from a checkpoint's stored config: old callback paths there are inert."""
    config = run_config(model_name="resnet10t")
    config["eval"]["lfw"]["_target_"] = "facetrain.evaluation.callbacks.PairVerification"
    config["callbacks"] = {"preemption": {"_target_": "facetrain.training.checkpoint.Preemption", "dirpath": "x"}}
    path, state = make_checkpoint(tmp_path / "old.ckpt", config)
    model, _ = load_embedding_model(path)
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, state[f"backbone.{key}"])


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_TARGETS.items()))
def test_moved_targets_table_is_current(old: str, new: str) -> None:
    from hydra.utils import get_object

    assert isinstance(get_object(new), type)
    with pytest.raises(Exception, match="Error loading|No module named|has no attribute"):  # noqa: PT011 - Hydra's own
        get_object(old)
