"""scripts/bench_train.py end to end on a tiny timm model: it runs both loops and writes what the issue asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_script


@pytest.mark.slow
def test_bench_train_writes_the_ratio_split_and_host_reads(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    done = run_script(
        "scripts/bench_train.py",
        "--backbones", "timm", "--batch-size", "4", "--image-size", "32", "--steps", "2", "--warmup", "1",
        "--rounds", "2", "--out", str(out),
        "--overrides", "backbone.model_name=test_resnet", "backbone.embedding_size=32", "backbone.input_size=32",
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    result = report["results"][0]
    assert report["lightning_over_plain"] == result["lightning_over_plain"] > 0
    assert len(result["facetrain_img_per_s"]) == len(result["plain_img_per_s"]) == 2
    assert set(result["ms_per_step_split"]) >= {"data_wait", "forward", "backward", "optimizer", "callbacks"}
    assert result["ms_per_step_split"]["forward"] > 0 and result["ms_per_step_split"]["backward"] > 0
    assert result["host_reads"]["method"] == "HostReadCounter" and result["host_reads"]["max"] == 0
    assert result["step_gflops"] > 0 and report["machine"]["device"] == "cpu"
