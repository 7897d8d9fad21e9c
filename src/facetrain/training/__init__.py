"""facetrain.training."""
