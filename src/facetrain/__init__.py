"""facetrain: config-driven face-recognition training (timm backbones, margin and cam-softmax heads)."""

__version__ = "0.1.0"
