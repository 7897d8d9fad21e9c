"""Export a checkpoint for deployment: `python export.py ckpt_path=<run dir>/checkpoints/last.ckpt format=onnx`."""

import hydra
from omegaconf import DictConfig

from facetrain.tasks.export import export


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
