"""facetrain.utils."""
