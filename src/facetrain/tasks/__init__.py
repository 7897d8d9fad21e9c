"""facetrain.tasks."""
