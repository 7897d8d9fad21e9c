"""Memory of a 5-million-image training index: main-process RSS and per-worker private memory, side by side.

Three ways to hold the paths (plus an int64 label array in each case), each measured in a fresh subprocess:

* ``list``: a Python list of path strings (the naive index);
* ``numpy_unicode``: a NumPy ``<U`` array (4 bytes per character);
* ``path_table``: :class:`facetrain.data.index.PathTable` (UTF-8 bytes + int64 offsets), what facetrain uses.

For each: the RSS growth of the process after building the index, and the *private* (copy-on-write duplicated)
memory of each of 2 forked DataLoader workers after they read ``--reads`` random paths (Linux
``/proc/<pid>/smaps_rollup``: Private_Clean + Private_Dirty). The goal (issue "Training that survives"): under 1 GB in
the main process and no per-worker growth. Paths look like CASIA/MS1M folders: ``<id:07d>/<n:03d>.jpg`` under a root.

Usage::

    python scripts/bench_index_memory.py            # 5,000,000 images
    python scripts/bench_index_memory.py --quick    # 500,000 images

Writes ``bench_results/index_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench_results" / "index_memory.json"
KINDS = ("list", "numpy_unicode", "path_table")
IMAGES_PER_ID = 60  # MS1M-v2: 5.8M images / 85k identities ≈ 68


def _kib(field: str, pid: int | str = "self", name: str = "status") -> int:
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _private_kib(pid: int | str = "self") -> int:
    return _kib("Private_Clean", pid, "smaps_rollup") + _kib("Private_Dirty", pid, "smaps_rollup")


def _relative_paths(n: int):  # noqa: ANN202 - a generator
    for i in range(n):
        yield f"{i // IMAGES_PER_ID:07d}/{i % IMAGES_PER_ID:03d}.jpg"


def _build(kind: str, n: int) -> Any:
    import numpy as np

    from facetrain.data.index import PathTable

    root = "/data/faces_emore/images"
    if kind == "list":
        return [f"{root}/{p}" for p in _relative_paths(n)]
    if kind == "numpy_unicode":
        return np.asarray([f"{root}/{p}" for p in _relative_paths(n)])
    return PathTable.from_relative(root, _relative_paths(n))


def _measure(kind: str, n: int, reads: int) -> dict[str, Any]:
    """Runs in its own process: build the index, then fork 2 DataLoader workers that read random paths."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    before = _kib("VmRSS")
    paths = _build(kind, n)
    labels = np.arange(n, dtype=np.int64) // IMAGES_PER_ID
    built = _kib("VmRSS")

    class Index(Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> tuple[int, int]:
            return len(paths[i]), int(labels[i])  # what a real dataset does before opening the file

    class Probe(Dataset):
        """Each worker reads ``reads`` random paths, then reports its private memory."""

        def __len__(self) -> int:
            return 2

        def __getitem__(self, w: int) -> int:
            rng = np.random.default_rng(w)
            dataset = Index()
            for i in rng.integers(0, n, reads):
                dataset[int(i)]
            return _private_kib()

    torch.set_num_threads(1)
    loader = DataLoader(Probe(), batch_size=None, num_workers=2, multiprocessing_context="fork")
    worker_private = [int(v) for v in loader]
    return {
        "kind": kind,
        "images": n,
        "main_rss_growth_mib": (built - before) / 1024,
        "main_rss_mib": built / 1024,
        "worker_private_mib": [v / 1024 for v in worker_private],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5_000_000)
    parser.add_argument("--reads", type=int, default=200_000, help="random paths each worker reads")
    parser.add_argument("--quick", action="store_true", help="500,000 images, 50,000 reads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.reads = 500_000, 50_000
    if args.child:
        print(json.dumps(_measure(args.child, args.images, args.reads)))
        return 0
    rows = []
    print(f"{'index':<15}{'images':>10}{'main RSS +MiB':>15}{'worker private MiB':>22}")
    for kind in KINDS:  # a fresh interpreter each, so one index's garbage cannot hide in another's numbers
        cmd = [sys.executable, __file__, "--child", kind, "--images", str(args.images), "--reads", str(args.reads)]
        out = subprocess.run(
            cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        workers = " / ".join(f"{v:.0f}" for v in row["worker_private_mib"])
        print(f"{kind:<15}{row['images']:>10}{row['main_rss_growth_mib']:>15.0f}{workers:>22}", flush=True)
    by_kind = {r["kind"]: r for r in rows}
    ratio = by_kind["list"]["main_rss_growth_mib"] / max(by_kind["path_table"]["main_rss_growth_mib"], 1e-9)
    print(f"path_table uses {ratio:.1f}x less main-process memory than a list of str")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"rows": rows, "reads_per_worker": args.reads, "cpu_count": mp.cpu_count()}, indent=2)
    )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
