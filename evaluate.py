"""Evaluate a trained checkpoint: `python evaluate.py ckpt_path=<run dir>/checkpoints/last.ckpt eval=[lfw,ytf]`."""

import hydra
from omegaconf import DictConfig

from facetrain.tasks.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
