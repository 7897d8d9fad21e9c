"""facetrain.evaluation."""
