"""Train a face-recognition model: `python train.py loss=cam_softmax backbone=resnet50` (see README.md)."""

import hydra
from omegaconf import DictConfig

from facetrain.tasks.train import check_optimized_metric, get_metric_value, train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    check_optimized_metric(cfg.get("optimized_metric"), cfg.get("eval"))  # before any data is read
    return get_metric_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
