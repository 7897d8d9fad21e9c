"""facetrain.models."""
