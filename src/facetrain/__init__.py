"""facetrain: config-driven face-recognition training (timm backbones, margin and cam-softmax heads)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["FaceEmbedder", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `import facetrain` stays light; torch and timm load only when FaceEmbedder is asked for.
    if name == "FaceEmbedder":
        from facetrain.inference.embedder import FaceEmbedder

        return FaceEmbedder
    raise AttributeError(f"module 'facetrain' has no attribute {name!r}")
