"""facetrain.data."""
