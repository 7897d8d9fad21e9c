"""README "Extending facetrain": a new head is one class plus one config, selected with ``loss=<name>``.

The class lives in this test module and its config in a temporary config directory added with ``hydra.searchpath``;
nothing in the package or in ``configs/`` is touched. The head then composes, passes and fails the config validation
by its own declared ranges, and trains a few steps in-process through ``facetrain.tasks.train.train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from facetrain.losses import CosineHead
from facetrain.tasks.train import train
from facetrain.utils.rules import Constraint, Interval, check_args
from facetrain.utils.schema import validate_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# The smallest synthetic set the generator accepts, 32x32 faces: the run checks the wiring, not the learning.
TINY = [
    *(
        f"synthetic.{key}={value}"
        for key, value in {
            "num_train_ids": 4,
            "images_per_train_id": 4,
            "num_lfw_ids": 20,
            "images_per_lfw_id": 2,
            "lfw_pairs_per_fold": 1,
            "num_ytf_ids": 20,
            "videos_per_ytf_id": 2,
            "frames_per_video": 1,
            "ytf_pairs_per_split": 1,
            "image_size": 32,
        }.items()
    ),
    "backbone.input_size=32",
    "backbone.embedding_size=16",
    "data.batch_size=4",
]


class ShiftHead(CosineHead):
    """Example head: target logit s·(cos θ_y − shift), i.e. CosFace written from scratch."""

    #: Valid values, checked per config key before the data is read and by the constructor.
    config_constraints: ClassVar[dict[str, Constraint]] = {
        **CosineHead.config_constraints,
        "shift": Interval(0.0, 1.0),
    }

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 30.0, shift: float = 0.2, nan_check: bool = True
    ) -> None:
        check_args(self, locals())  # the same declaration, on the Python API: "ShiftHead.shift=1.5 is invalid: ..."
        super().__init__(embedding_size, num_classes, scale, nan_check)
        self.shift = float(shift)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Subtracts ``shift`` from the target cosines."""
        out = cos.clone()
        rows = torch.arange(len(labels), device=cos.device)
        out[rows, labels] = cos[rows, labels] - self.shift
        return out


HEAD_CONFIG = f"""\
# python train.py loss=shift   (an example head defined in a test module)
_target_: {ShiftHead.__module__}.ShiftHead
_partial_: true
scale: 30.0
shift: 0.2
"""


@pytest.fixture
def compose_with_head(tmp_path: Path):  # noqa: ANN201
    extra = tmp_path / "extra_configs"
    (extra / "loss").mkdir(parents=True)
    (extra / "loss" / "shift.yaml").write_text(HEAD_CONFIG)

    def _compose(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose(
                "train",
                overrides=[
                    f"hydra.searchpath=[file://{extra}]",
                    f"paths.root_dir={tmp_path}",
                    f"paths.output_dir={tmp_path / 'run'}",
                    *overrides,
                ],
            )

    yield _compose
    GlobalHydra.instance().clear()


def test_a_head_defined_outside_the_package_is_validated_and_trains(compose_with_head) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=r"loss\.shift=1\.5 is invalid.*\[0, 1\]"):
        validate_config(compose_with_head("loss=shift", "loss.shift=1.5"))
    with pytest.raises(ValueError, match=r"ShiftHead\.shift=1\.5 is invalid.*\[0, 1\]"):
        ShiftHead(16, 4, shift=1.5)
    with pytest.raises(ValueError, match=r"loss\.shfit"):  # an unknown key is refused too, naming it
        validate_config(compose_with_head("loss=shift", "+loss.shfit=0.1"))

    cfg = compose_with_head(
        "experiment=smoke",
        *TINY,
        "loss=shift",
        "loss.shift=0.3",
        "eval=[]",
        "callbacks=none",
        "logger=none",
        "++trainer.max_steps=2",
    )
    metrics = train(cfg)
    assert metrics["global_step"] == 2
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
