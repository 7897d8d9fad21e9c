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
GPU, covers those.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch

__all__ = ["HostReadCounter", "HostReadsPerStep", "cuda_sync_counter"]

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


class HostReadsPerStep(pl.Callback):
    """Counts the host reads of every training step with :class:`HostReadCounter` (tests and ``bench_train.py``).

    A step's window runs from its ``on_train_batch_start`` to the next one (or to the epoch end), so it holds the
    forward, backward and optimizer step, every callback's batch hooks and the fetch of the next batch. Put it first in
    the callback list, so that the epoch-end work (evaluation, checkpoints) falls outside every window.

    Attributes:
        steps: One ``(global_step, is_logging_step, reads)`` per training step, in order.
        sites: Where each step's reads came from (``global_step -> Counter``), for steps with reads.
        counter: The counter.
    """

    def __init__(self) -> None:
        self.steps: list[tuple[int, bool, int]] = []
        self.sites: dict[int, Counter[str]] = {}
        self.counter = HostReadCounter()
        self.counter.enabled = False
        self._open: tuple[int, bool, int] | None = None

    def _close(self) -> None:
        if self._open is not None:
            step, logging_step, start = self._open
            self.steps.append((step, logging_step, self.counter.count - start))
            if self.counter.count > start:
                self.sites[step] = Counter(self.counter.sites)
            self.counter.sites.clear()
            self._open = None
        self.counter.enabled = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counter.__enter__()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._close()
        self.counter.sites.clear()
        logging_step = (trainer.global_step + 1) % max(1, int(trainer.log_every_n_steps)) == 0
        self._open = (trainer.global_step, logging_step, self.counter.count)
        self.counter.enabled = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        self.counter.__exit__()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.counter.__exit__()
