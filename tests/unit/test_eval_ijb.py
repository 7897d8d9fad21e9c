"""IJB-C / TinyFace evaluation sets and protocols (issue 14): loaders on tiny synthetic companion sets, protocol
results equal to direct calls of the NumPy functions, bad input stopped before embedding, eval=ijbb in the
synthetic world refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facetrain.callbacks.eval_sets import IjbEvaluation
from facetrain.data.decode import read_rgb
from facetrain.data.ijb import aligned_face, read_ijb
from facetrain.data.synthetic.ijb import SyntheticIjbc
from facetrain.data.synthetic.tinyface import SyntheticTinyFace
from facetrain.data.tinyface import read_tinyface
from facetrain.data.world import check_datasets
from facetrain.evaluation.embed import DecodedImages, fuse_flip
from facetrain.evaluation.ijb import template_features, verification
from facetrain.evaluation.ijb_search import identification
from facetrain.evaluation.protocols_ijb import IjbProtocol, TinyFaceProtocol, parse_variant
from facetrain.evaluation.sets_ijb import ijb, tinyface
from facetrain.evaluation.tinyface import DISTRACTOR_LABEL, tinyface_report
from facetrain.utils.rules import ConfigError


@pytest.fixture(scope="module")
def ijbc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ijb") / "ijbc"
    SyntheticIjbc(root, num_ids=4, templates_per_id=3, impostor_pairs=200, workers=1).ensure()
    return root


@pytest.fixture(scope="module")
def tinyface_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tf") / "tinyface"
    SyntheticTinyFace(root, num_ids=3, num_distractors=4, workers=1).ensure()
    return root


def _embeddings(n: int, seed: int = 0) -> np.ndarray:
    """Random face features with norms far from 1 (N1 must see them)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 16)) * rng.uniform(0.2, 3.0, size=(n, 1))


def test_ijb_set_embeds_loose_crops_aligned_from_their_landmarks(ijbc_root: Path) -> None:
    evalset = ijb(str(ijbc_root), "ijbc", ["G1", "G2"])
    parsed = read_ijb(ijbc_root)
    assert len(evalset) == len(parsed.images) and evalset.has_search
    assert evalset.paths[0] == str(ijbc_root / "loose_crop" / parsed.images[0])
    assert read_rgb(evalset.paths[0]).shape[:2] == (160, 160)  # the loose crop, not the network input
    face = evalset.decode(0)
    assert face.shape == (112, 112, 3) and face.dtype == np.uint8
    np.testing.assert_array_equal(face, aligned_face(parsed, 0))
    # What the callback embeds with cache=true: the aligned faces, kept as uint8.
    cache = DecodedImages(evalset.decode, len(evalset), None)
    cache.ensure([0, 1])
    assert all(a.dtype == np.uint8 and a.shape == (112, 112, 3) for a in cache.cache.values())


@pytest.mark.parametrize("variants", [["N1D1"], ["N1D1", "N0D0", "N1D0"]])
def test_ijb_protocol_equals_direct_pooling_verification_and_search(ijbc_root: Path, variants: list[str]) -> None:
    evalset = ijb(str(ijbc_root))
    parsed = evalset.ijb
    emb = _embeddings(len(evalset))
    protocol = IjbProtocol(variants, fars=(1e-2, 1e-1), ranks=(1, 2), fpirs=(0.5,))
    report = protocol(emb, evalset)
    for i, variant in enumerate(variants):
        keep_norm, faceness = parse_variant(variant)
        ids, feats = template_features(emb, parsed.templates, parsed.medias, parsed.faceness if faceness else None,
                                       keep_norm)  # fmt: skip
        expected = verification(ids, feats, parsed.pair_t1, parsed.pair_t2, parsed.pair_labels, (1e-2, 1e-1)).values
        search = identification(ids, feats, parsed.galleries, parsed.probe, (1, 2), (0.5,)).values
        expected.update({k if "/" in k else f"mean/{k}": v for k, v in search.items()})
        prefix = "" if i == 0 else f"{variant}/"
        got = {k[len(prefix) :]: v for k, v in report.values.items() if k.startswith(prefix)}
        got = {k: v for k, v in got.items() if i > 0 or not k.startswith(tuple(f"{v}/" for v in variants[1:]))}
        assert got == expected
        assert {"tar@far=0.1", "tar@far=0.1/strict", "G1/rank1", "mean/tpir@fpir=0.5"} <= set(got)
    assert report.options["variant"] == variants[0]


def test_faceness_and_norm_change_the_ijb_result(ijbc_root: Path) -> None:
    evalset = ijb(str(ijbc_root))
    emb = _embeddings(len(evalset), seed=1)
    report = IjbProtocol(["N1D1", "N1D0", "N0D1"], fars=(0.1,)).__call__(emb, evalset)
    scores = [report["scores"], report["N1D0/scores"], report["N0D1/scores"]]
    assert not any(np.allclose(a, b) for i, a in enumerate(scores) for b in scores[i + 1 :])
    # The norm is an input: the callback must keep it for N1, and may normalise for N0 only.
    assert not IjbProtocol(["N1D1"]).unit_embeddings and IjbProtocol(["N0D1", "N0D0"]).unit_embeddings


def test_ijb_protocol_artifacts_roc_and_cmc(ijbc_root: Path) -> None:
    evalset = ijb(str(ijbc_root))
    protocol = IjbProtocol(["N1D1", "N0D0"], fars=(0.1,))
    artifacts = protocol.artifacts(protocol(_embeddings(len(evalset)), evalset), "ijbc")
    kinds = {kind: columns for kind, _, columns in artifacts}
    assert set(kinds) == {"roc", "roc_N0D0", "cmc"}
    assert list(kinds["cmc"]) == ["rank", "G1", "G2"] and len(kinds["cmc"]["rank"]) == 10


def test_ijb_protocol_refuses_bad_options_and_missing_search_lists(ijbc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"eval\.ijbc\.variants: 'N2D1'"):
        IjbProtocol(["N2D1"])
    with pytest.raises(ValueError, match=r"eval\.ijbc\.fpirs"):
        IjbProtocol(fpirs=(0.0,))
    root = tmp_path / "ijbc"
    shutil.copytree(ijbc_root, root)
    (root / "meta" / "ijbc_1N_probe_mixed.csv").unlink()
    evalset = ijb(str(root))
    with pytest.raises(ValueError, match=r"eval\.ijbc\.identification=false"):
        IjbProtocol(identification=True).check(evalset)
    report = IjbProtocol(identification=False, fars=(0.1,))(_embeddings(len(evalset)), evalset)
    assert "tar@far=0.1" in report and "mean/rank1" not in report


def test_bad_landmark_line_stops_the_evaluation_before_embedding(ijbc_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ijbc"
    shutil.copytree(ijbc_root, root)
    landmarks = root / "meta" / "ijbc_name_5pts_score.txt"
    lines = landmarks.read_text().splitlines()
    lines[2] = " ".join(lines[2].split()[:-2])  # one landmark value and the score lost
    landmarks.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{landmarks}:3: expected an image name, 10 landmark values"):
        IjbEvaluation("ijbc", root=str(root), fars=(0.1,))  # loads the set in the constructor, before any model exists


def test_tinyface_set_rows_labels_and_resize(tinyface_root: Path) -> None:
    evalset = tinyface(str(tinyface_root))
    parsed = read_tinyface(tinyface_root)
    p, m, d = len(parsed.probe_paths), len(parsed.match_paths), len(parsed.distractor_paths)
    assert (evalset.probes, evalset.matches, len(evalset)) == (p, m, p + m + d) and d == 4
    np.testing.assert_array_equal(evalset.labels[:p], parsed.probe_labels)
    np.testing.assert_array_equal(evalset.labels[p : p + m], parsed.match_labels)
    assert np.all(evalset.labels[p + m :] == DISTRACTOR_LABEL)
    assert max(read_rgb(evalset.paths[0]).shape[:2]) <= 28  # native low resolution on disk
    assert evalset.decode(0).shape == (112, 112, 3) and evalset.decode(0).dtype == np.uint8


def test_tinyface_protocol_equals_direct_report(tinyface_root: Path) -> None:
    evalset = tinyface(str(tinyface_root))
    emb = _embeddings(len(evalset), seed=2)
    report = TinyFaceProtocol((1, 2, 5))(emb, evalset)
    p, g, labels = evalset.probes, evalset.probes + evalset.matches, evalset.labels
    expected = tinyface_report(emb[:p], labels[:p], emb[p:g], labels[p:g], emb[g:], ranks=(1, 2, 5))
    assert report.values == expected.values and set(report.values) == {"rank1", "rank2", "rank5"}
    np.testing.assert_array_equal(report["cmc"], expected["cmc"])
    [(kind, _, columns)] = TinyFaceProtocol((1, 2, 5)).artifacts(report, "tinyface")
    assert kind == "cmc" and list(columns["rank"]) == [1, 2, 3, 4, 5]


def test_eval_ijbb_is_refused_in_the_synthetic_world(compose_cfg) -> None:  # noqa: ANN001
    cfg = compose_cfg("experiment=smoke", "eval=[lfw,ijbb]")
    with pytest.raises(ConfigError, match=r"eval\.ijbb\.root is null.*world=real with paths\.ijbb="):
        check_datasets(cfg)


def test_flip_sum_keeps_the_raw_norm_when_asked() -> None:
    emb, flipped = torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(fuse_flip(emb, flipped, "sum", normalize=False), torch.tensor([[4.0, 2.0]]))
    torch.testing.assert_close(fuse_flip(emb, None, "none", normalize=False), emb)
    torch.testing.assert_close(fuse_flip(emb, flipped, "sum"), torch.tensor([[4.0, 2.0]]) / 20**0.5)
