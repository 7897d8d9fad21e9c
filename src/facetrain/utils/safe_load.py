"""Weights-only checkpoint loading with clear errors, free of Lightning so that inference code can use it too.

``facetrain.training.checkpoint`` re-exports both functions; this module exists so that ``FaceEmbedder`` (which must
import without Lightning or Hydra) loads checkpoints through the same single check. It also names the checkpoint
entry that holds the run config, which the training side writes and the inference side reads.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CONFIG_KEY", "UnsafeCheckpointError", "safe_load"]

# The checkpoint entry holding the resolved run config, written by ``FaceRecognitionModule.on_save_checkpoint`` and
# read back to rebuild the model. Defined here, below both the models and the inference layer, so both can import it.
CONFIG_KEY = "facetrain_config"


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled objects beyond tensors and plain data; it is not loaded."""


def safe_load(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors for missing, truncated and unsafe files.

    Raises:
        FileNotFoundError: No such file.
        UnsafeCheckpointError: The pickle references a global outside torch's weights-only allowlist.
        ValueError: The file is truncated or not a torch checkpoint (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains pickled objects that are not tensors or plain data, which could "
            f"run code when loaded. facetrain checkpoints never do; this file was modified or made elsewhere. "
            f"Details: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, IndexError, UnicodeDecodeError) as err:
        # A file that is not a torch zip archive falls back to the legacy unpickler, which fails on arbitrary bytes
        # with any of these.
        raise ValueError(f"checkpoint {path} is truncated or not a torch checkpoint: {err}") from None
