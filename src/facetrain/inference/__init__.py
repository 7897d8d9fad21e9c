"""Using a trained model outside training: the preprocessing contract, ``FaceEmbedder``, export and the CLI.

Submodules are imported on use; ``facetrain.inference.embedder`` needs neither Lightning nor Hydra.
"""
