"""The preprocessing contract: built from a run config, thresholds from an evaluation, JSON round trip, old ckpts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from facetrain.data.align import ARCFACE_112x112
from facetrain.evaluation.verification import UndefinedMetricError, roc_curve_points, threshold_at_far
from facetrain.inference.contract import Contract, ContractError, contract_from_config, verification_thresholds
from facetrain.inference.model import load_checkpoint
from tests.inference_helpers import make_checkpoint, run_config


def test_contract_from_config_reads_the_evaluation_preprocessing() -> None:
    config = run_config("iresnet18", 112, embedding_size=64, flip="concat")
    config["eval"]["lfw"]["transform"]["transforms"][0].update(mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4])
    contract = contract_from_config(config, {"accuracy_optimal": 0.25})
    assert contract.input_size == (112, 112) and contract.template == "112x112"
    assert contract.mean == (0.4, 0.5, 0.6) and contract.std == (0.2, 0.3, 0.4)  # the eval set's, not data's
    assert contract.flip == "concat" and contract.embedding_size == 128
    assert contract.threshold() == 0.25 and contract.threshold("far") is None
    data = contract.to_dict()
    assert data["alignment"]["points_xy"] == ARCFACE_112x112.round(4).tolist()
    assert data["alignment"]["landmark_order"][0] == "left_eye" and data["input"]["channel_order"] == "RGB"
    assert Contract.from_dict(json.loads(json.dumps(data))) == contract  # plain JSON data, lossless


def test_sphereface_crop_and_no_normalize() -> None:
    config = run_config("sphereface20", [112, 96])
    config["eval"]["lfw"]["transform"]["transforms"] = []
    config["data"]["eval_transform"]["transforms"] = []
    contract = contract_from_config(config)
    assert contract.template == "112x96" and contract.input_size == (112, 96)
    # No Normalize: the model saw raw 0-255 floats, i.e. (x / 255 - 0) / (1 / 255).
    assert contract.mean == (0.0, 0.0, 0.0) and contract.std == pytest.approx((1 / 255,) * 3)
    assert "reason" in contract.thresholds
    assert contract_from_config(run_config("resnet18", 64)).template is None  # no standard template


def test_verification_thresholds_by_hand() -> None:
    # 2000 impostors (FAR 1e-3 = 2 false accepts allowed) and 10 genuine pairs.
    impostor = np.linspace(-0.5, 0.5, 2000)
    genuine = np.full(10, 0.9)
    scores = np.concatenate([genuine, impostor])
    issame = np.r_[np.ones(10, bool), np.zeros(2000, bool)]
    fpr, _, thr = roc_curve_points(scores, issame)
    # Accepting >= the 2nd-highest impostor admits exactly 2 of 2000 = FAR 1e-3.
    assert threshold_at_far(fpr, thr, 1e-3, 2000) == pytest.approx(impostor[-2])
    out = verification_thresholds("lfw", "cosine", False, 0.99, 0.7, fpr, thr, 2000)
    assert out["accuracy_optimal"] == 0.7 and out["at_far"] == pytest.approx(impostor[-2]) and out["eval_set"] == "lfw"
    l2 = verification_thresholds("lfw", "l2", False, 0.99, 0.6, fpr, thr, 2000)
    assert l2["accuracy_optimal"] == pytest.approx(0.7)  # squared L2 0.6 of unit vectors = cosine 0.7
    small = verification_thresholds("lfw", "cosine", False, 0.9, 0.7, fpr[:5], thr[:5], 40)
    assert small["at_far"] is None and "1/40" in small["at_far_reason"]
    sub = verification_thresholds("lfw", "cosine", True, 0.9, 0.7, fpr, thr, 2000)
    assert sub["accuracy_optimal"] is None and "mean_subtraction" in sub["reason"]
    with pytest.raises(UndefinedMetricError):
        threshold_at_far(fpr, thr, 1e-4, 2000)


def test_malformed_contracts_are_named(tmp_path: Path) -> None:
    good = contract_from_config(run_config()).to_dict()
    with pytest.raises(ContractError, match=r"x\.json: malformed preprocessing contract .*'input'"):
        Contract.from_dict({k: v for k, v in good.items() if k != "input"}, source="x.json")
    with pytest.raises(ContractError, match="input.std must be positive"):
        Contract.from_dict({**good, "input": {**good["input"], "std": [0, 1, 1]}})
    with pytest.raises(ContractError, match="newer than this facetrain"):
        Contract.from_dict({**good, "format_version": 99})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ContractError, match="cannot read the preprocessing contract"):
        Contract.read(tmp_path / "bad.json")


def test_old_checkpoint_gets_a_rebuilt_contract(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt, _ = make_checkpoint(tmp_path / "old.ckpt", with_contract=False)
    with caplog.at_level(logging.WARNING):
        _, contract, _ = load_checkpoint(ckpt)
    assert "predates the stored preprocessing contract" in caplog.text and "thresholds" in caplog.text
    assert contract.input_size == (32, 32) and contract.threshold() is None
    new, _ = make_checkpoint(tmp_path / "new.ckpt")
    assert load_checkpoint(new)[1].threshold() == 0.3
