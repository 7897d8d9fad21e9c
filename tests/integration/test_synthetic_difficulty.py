"""The default synthetic dataset is a real open-set task: pixels and an untrained network cannot solve it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from facetrain.callbacks.eval_sets import PairVerification
from facetrain.data.decode import read_rgb
from facetrain.data.synthetic import SyntheticFaces
from facetrain.evaluation.verification import kfold_accuracy
from facetrain.models.backbone import FaceBackbone

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lfw_pairs(tmp_path_factory: pytest.TempPathFactory, compose_cfg_module) -> PairVerification:
    cfg = compose_cfg_module()
    source = SyntheticFaces(root=str(tmp_path_factory.mktemp("synthetic") / "synthetic"), seed=0)
    source.ensure()  # the default parameters, as python train.py uses them
    return PairVerification(
        "lfw",
        root=str(source.lfw_root),
        pairs_file=str(source.lfw_pairs),
        transform=instantiate(cfg.data.eval_transform),
    )


def test_default_set_has_ten_folds_of_matched_and_mismatched_pairs(lfw_pairs: PairVerification) -> None:
    pairs = lfw_pairs.set.pairs
    assert np.bincount(pairs.folds).tolist() == [len(pairs) // 10] * 10
    assert pairs.issame.mean() == 0.5


def test_raw_pixels_score_at_most_075(lfw_pairs: PairVerification) -> None:
    pixels = np.stack([read_rgb(p).astype(np.float32).ravel() for p in lfw_pairs.paths])
    best = 0.0
    for centred in (False, True):
        x = pixels - pixels.mean(axis=1, keepdims=True) if centred else pixels
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        scores, pairs = lfw_pairs.protocol.pair_scores(x, lfw_pairs.set), lfw_pairs.set.pairs
        acc = kfold_accuracy(scores, pairs.issame, folds=pairs.folds)["accuracy"]
        best = max(best, acc)
    assert 0.5 < best <= 0.75, f"raw-pixel cosine reaches {best:.3f}"


class _Untrained(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = FaceBackbone("resnet18", embedding_size=512)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)


def test_untrained_backbone_scores_at_most_080(lfw_pairs: PairVerification) -> None:
    results = lfw_pairs.evaluate(_Untrained())
    assert results["lfw/acc"] <= 0.80, f"untrained resnet18 reaches {results['lfw/acc']:.3f}"
