"""Classifier layout (config group ``classifier/``): replicated, model parallel and Partial FC for every margin head.

The class centres are split over the ranks in contiguous blocks (:func:`block_range`); the maths is in
:mod:`facetrain.classifier.sharded`.
"""

from __future__ import annotations

from facetrain.classifier.config import check_classifier_head
from facetrain.classifier.replicated import replicated
from facetrain.classifier.sharded import ShardedClassifier, check_shardable, sharded_cross_entropy
from facetrain.classifier.shards import block_range, init_rows

__all__ = [
    "ShardedClassifier",
    "block_range",
    "check_classifier_head",
    "check_shardable",
    "init_rows",
    "replicated",
    "sharded_cross_entropy",
]
