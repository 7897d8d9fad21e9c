"""``classifier=replicated`` (the default): every rank holds the whole head, exactly as before the classifier group."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["replicated"]


def replicated(head: Callable[..., nn.Module], embedding_size: int, num_classes: int) -> nn.Module:
    """Builds the configured head itself, holding all ``num_classes`` centres (DDP all-reduces its gradient)."""
    return head(embedding_size=embedding_size, num_classes=num_classes)
