"""Counting the places where the host reads a device value, so that a training step can be held to zero of them.

On a GPU every such read (``loss.item()``, ``if tensor:``, ``float(tensor)``, ``tensor.tolist()``, a boolean-mask
index, ``.cpu()``) makes the CPU wait until the device has finished all queued work, which drains the pipeline of
launched kernels once per read. CUDA can report them itself (``torch.cuda.set_sync_debug_mode``), but only on a
GPU; :class:`HostReadCounter` finds the Python-level reads on any device, the CPU included, by wrapping the
``torch.Tensor`` methods that perform them. It is a test and benchmark tool: it patches the class globally while
active, so never leave it on in a training run.

What it cannot see: ``tensor.to("cpu")`` (on a CPU run the batch transfer to the "device" looks the same, so it is
not counted; ``.cpu()`` is), and reads made inside C++ (an operator whose output size depends on the data, such as
``torch.nonzero`` called from another operator). The CUDA sync debug mode, used by ``scripts/bench_train.py`` on a
GPU, covers those. The per-step callback that uses it in a training run is
:class:`facetrain.callbacks.host_reads.HostReadsPerStep`.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["HostReadCounter", "cuda_sync_counter"]

#: Tensor methods whose Python call reads device memory on the host (or, for nonzero/unique/masked_select, produce a
#: shape that depends on the data, which needs the same read).
_READING_METHODS = (
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "nonzero",
    "unique",
    "masked_select",
)


#: Library internals that only pass a read through; the useful site is their caller.
_PLUMBING = ("/torch/", "/lightning_utilities/")


def _is_mask(index: Any) -> bool:
    """A boolean tensor used as an index (its result size depends on the data, so the host must read the mask)."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class HostReadCounter:
    """Context manager counting host reads of tensor values (see the module docstring).

    Attributes:
        count: Reads seen while counting was on.
        sites: ``Counter`` of the innermost caller outside torch for each read (``file:line in function``), to say
            where a read comes from when a test fails.

    Example:
        >>> with HostReadCounter() as reads:
        ...     _ = torch.ones(2).sum().item()
        >>> reads.count
        1
    """

    def __init__(self) -> None:
        self.count = 0
        self.sites: Counter[str] = Counter()
        self.enabled = True
        self._originals: dict[str, Callable[..., Any]] = {}
        self._depth = 0  # a read inside another counted read (tolist calling item, say) counts once

    def _record(self) -> None:
        self.count += 1
        # The innermost frames outside torch and lightning_utilities' collection helpers: where the read was asked for.
        frames = [f for f in traceback.extract_stack()[:-2] if not any(s in f.filename for s in _PLUMBING)]
        self.sites[" <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno} {f.name}" for f in frames[-1:-4:-1])] += 1

    def _wrap(self, name: str, original: Callable[..., Any], reads: Callable[..., bool]) -> Callable[..., Any]:
        def wrapper(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.enabled and self._depth == 0 and reads(tensor, *args, **kwargs):
                self._record()
            self._depth += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._depth -= 1

        wrapper.__name__ = name
        return wrapper

    def __enter__(self) -> HostReadCounter:
        conditional = {
            "__getitem__": lambda tensor, index, *rest, **kw: _is_mask(index),
            "__setitem__": lambda tensor, index, *rest, **kw: _is_mask(index),
        }
        for name in (*_READING_METHODS, *conditional):
            original = getattr(torch.Tensor, name)
            self._originals[name] = original
            reads = conditional.get(name, lambda *args, **kwargs: True)
            setattr(torch.Tensor, name, self._wrap(name, original, reads))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self._originals.clear()


@contextmanager
def cuda_sync_counter() -> Iterator[list[str]]:
    """On CUDA: collect the synchronising calls CUDA itself reports (``torch.cuda.set_sync_debug_mode("warn")``).

    Yields a list that receives one message per synchronising call made inside the ``with`` block.
    """
    import warnings

    messages: list[str] = []
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield messages
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    messages.extend(str(w.message) for w in caught if "synchroniz" in str(w.message).lower())
