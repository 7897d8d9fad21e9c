"""Benchmark the training image loader against raw OpenCV decoding and a torchvision ImageFolder + PIL pipeline.

It writes synthetic 112×112 JPEG faces (``facetrain.data.synthetic``, CASIA-WebFace layout) to a temporary
directory, then measures in one run, interleaved so machine load affects every method alike:

* ``raw_cv2``: ``cv2.imread`` of every file in this process (decode only: the ceiling for one core);
* ``ours_float``: ``LabelledImages`` + the default training transform (flip, Normalize, ToTensorV2), float batches,
  through a DataLoader with ``--workers`` workers (``data.uint8_batches=false``);
* ``ours_uint8``: ``LabelledImages`` + ``Uint8CHW``, uint8 batches (``data.uint8_batches=true``; flip and
  normalisation then run on the device: ``gpu_augment`` is timed separately on the best available device). The
  fetcher calls ``LabelledImages.__getitems__``, which decodes a whole batch into one array, and ``collate_batch``
  passes it on, as in ``FaceDataModule.train_dataloader``. The array is one of the worker's reused shared-memory
  buffers (``data.worker_buffers``, default 4);
* ``ours_uint8_new_segments``: the same with ``data.worker_buffers=0``: a new shared-memory segment per batch, as
  ``default_collate`` allocates (what ``ours_uint8`` did before the buffers were reused);
* ``ours_uint8_per_sample``: the same, fetched sample by sample (``__getitem__`` + ``default_collate``): what
  ``ours_uint8`` did before the batched fetch;
* ``torchvision``: ``ImageFolder`` (PIL decode) + RandomHorizontalFlip, ToTensor, Normalize, same DataLoader;
* ``ours_rec_uint8``: the same JPEG bytes packed by ``folders_to_recordio`` into an InsightFace RecordIO pack, read
  by ``RecordIOFaces`` + ``Uint8CHW`` (``data=insightface_rec data.uint8_batches=true``), same batched path;
* ``ours_uint8_inproc``: the uint8 dataset through a DataLoader with no workers (decoding in this process), which
  separates the cost of our decode path from the DataLoader's worker-to-main transfer (a shared-memory segment per
  batch).

DataLoaders use persistent workers and one untimed warm-up epoch, so worker start-up is not counted. It also
records the CPU time per image of the workers (user and system, from ``/proc``) and of the main process, counts the
distinct shared-memory segments one epoch's batches arrive in, and times the start-up file check
(``data.verify_images=header`` and ``decode``). Reports medians in images/s and ``ours / (raw × workers)`` (the
goal is >= 0.70 per worker), and writes ``bench_results/loader.json``.

Usage::

    python scripts/bench_loader.py            # 4000 images, 5 repeats
    python scripts/bench_loader.py --quick    # 1000 images, 3 repeats (a smoke check)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader, Dataset

from facetrain.data.batches import collate_batch
from facetrain.data.checks import find_bad_images
from facetrain.data.convert import folders_to_recordio
from facetrain.data.image_files import LabelledImages, scan_identity_folders
from facetrain.data.recordio import RecordIOFaces
from facetrain.data.synthetic import SyntheticFaces
from facetrain.data.transforms import GpuAugment, Uint8CHW

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench_results" / "loader.json"
PER_ID = 20
METHODS = (
    "raw_cv2",
    "ours_float",
    "ours_uint8",
    "ours_uint8_new_segments",
    "ours_uint8_per_sample",
    "torchvision",
    "ours_rec_uint8",
    "ours_uint8_inproc",
)


class PerSampleImages(LabelledImages):
    """``LabelledImages`` without the batched fetch: the DataLoader then calls ``__getitem__`` per sample."""

    __getitems__ = None  # the fetcher checks ``dataset.__getitems__`` for truth


def make_images(root: Path, count: int) -> Path:
    """Write about ``count`` synthetic training JPEGs (CASIA layout) under ``root``; returns the training root."""
    ids = max(1, round(count / PER_ID))
    SyntheticFaces(
        root=root, seed=0, num_train_ids=ids, images_per_train_id=PER_ID,
        num_lfw_ids=20, images_per_lfw_id=2, lfw_pairs_per_fold=1,
        num_ytf_ids=20, videos_per_ytf_id=2, frames_per_video=1, ytf_pairs_per_split=1,
        workers=max(1, min(4, os.cpu_count() or 1)),
    ).ensure()  # fmt: skip
    return root / "casia"


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far, from ``/proc/<pid>/stat`` (Linux; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


#: CPU microseconds per image of the last timed epoch per method: {"worker_user", "worker_system", "main"}.
CPU_US: dict[str, list[dict[str, float]]] = {}


def time_raw(paths: np.ndarray) -> float:
    cpu = time.process_time()
    started = time.perf_counter()
    for p in paths:
        if cv2.imread(str(p), cv2.IMREAD_COLOR) is None:
            raise OSError(f"cannot decode {p}")
    seconds = time.perf_counter() - started
    CPU_US.setdefault("raw_cv2", []).append({"main": (time.process_time() - cpu) / len(paths) * 1e6})
    return len(paths) / seconds


def make_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=False,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collate_batch,  # what the training loader uses; default_collate for anything but a uint8 batch
        generator=torch.Generator().manual_seed(0),
    )


def time_loader(loader: DataLoader, name: str) -> float:
    """Images/s of one epoch; also records the CPU time per image of the workers (user, system) and of this process."""
    iterator = getattr(loader, "_iterator", None)  # persistent workers: alive since the warm-up epoch
    pids = [w.pid for w in getattr(iterator, "_workers", [])]
    before = [process_cpu_seconds(pid) for pid in pids]
    cpu = time.process_time()
    started = time.perf_counter()
    n = 0
    for images, _ in loader:
        n += images.shape[0]
    seconds = time.perf_counter() - started
    after = [process_cpu_seconds(pid) for pid in pids]
    per = 1e6 / n
    record = {"main": (time.process_time() - cpu) * per}
    if pids:
        record["worker_user"] = sum(a[0] - b[0] for a, b in zip(after, before, strict=True)) * per
        record["worker_system"] = sum(a[1] - b[1] for a, b in zip(after, before, strict=True)) * per
    CPU_US.setdefault(name, []).append(record)
    return n / seconds


def count_segments(loader: DataLoader) -> tuple[int, int]:
    """Batches of one epoch and the distinct shared-memory segments they arrived in (untimed; fd strategy only).

    A batch in a reused worker buffer lies in the main process's lasting mapping of it (its address identifies it);
    any other arrives in a shared segment of its own (its inode identifies it).
    """
    segments: set[object] = set()
    batches = 0
    for images, _ in loader:
        batches += 1
        storage = images.untyped_storage()
        shared = storage.is_shared()
        segments.add(os.fstat(storage._share_fd_cpu_()[0]).st_ino if shared else images.data_ptr())
    return batches, len(segments)


def time_gpu_augment(batch_size: int, repeats: int = 20) -> dict[str, Any]:
    """Time GpuAugment on one uint8 batch on the best device here (CUDA if present, else CPU)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = torch.randint(0, 256, (batch_size, 3, 112, 112), dtype=torch.uint8, device=device)
    augment = GpuAugment()
    times = []
    for _ in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        augment(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    median = statistics.median(times[2:])
    return {
        "device": str(device),
        "batch_size": batch_size,
        "median_ms": median * 1e3,
        "img_per_s": batch_size / median,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    cv2.setNumThreads(1)  # one decode thread, like a DataLoader worker
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        started = time.perf_counter()
        train_root = make_images(Path(tmp), args.images)
        _, paths, labels = scan_identity_folders(train_root)
        print(f"wrote {len(paths)} synthetic 112x112 JPEGs in {time.perf_counter() - started:.1f} s")

        float_tf = A.Compose([A.HorizontalFlip(p=0.5), A.Normalize(mean=[0.5] * 3, std=[0.5] * 3), ToTensorV2()])
        from torchvision import datasets
        from torchvision import transforms as T

        tv_tf = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
        loaders = {
            "ours_float": make_loader(LabelledImages(paths, labels, float_tf), args.batch_size, args.workers),
            "ours_uint8": make_loader(LabelledImages(paths, labels, Uint8CHW()), args.batch_size, args.workers),
            "ours_uint8_new_segments": make_loader(
                LabelledImages(paths, labels, Uint8CHW(), worker_buffers=0), args.batch_size, args.workers
            ),
            "ours_uint8_per_sample": make_loader(
                PerSampleImages(paths, labels, Uint8CHW()), args.batch_size, args.workers
            ),
            "torchvision": make_loader(datasets.ImageFolder(str(train_root), tv_tf), args.batch_size, args.workers),
        }
        # The same uint8 dataset without worker processes: separates our decode path from DataLoader IPC.
        # The same JPEG bytes in an InsightFace RecordIO pack (data=insightface_rec), the same uint8 batched path.
        pack = Path(tmp) / "pack"
        pack.mkdir()
        folders_to_recordio(train_root, pack, show_progress=False)
        loaders["ours_rec_uint8"] = make_loader(RecordIOFaces(pack, Uint8CHW()), args.batch_size, args.workers)
        loaders["ours_uint8_inproc"] = make_loader(LabelledImages(paths, labels, Uint8CHW()), args.batch_size, 0)
        methods: dict[str, Callable[[], float]] = {"raw_cv2": lambda: time_raw(paths)}
        methods.update(
            {name: (lambda loader=loader, name=name: time_loader(loader, name)) for name, loader in loaders.items()}
        )
        for fn in methods.values():  # warm-up: page cache, worker start-up, first-call costs
            fn()
        CPU_US.clear()
        results: dict[str, list[float]] = {name: [] for name in methods}
        for r in range(args.repeats):
            for name, fn in methods.items():
                results[name].append(fn())
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in results.items()))
        segments = {
            name: count_segments(loaders[name]) for name in ("ours_uint8", "ours_uint8_new_segments", "ours_rec_uint8")
        }
        del loaders

        checks = {}
        for check in ("header", "decode"):
            started = time.perf_counter()
            bad = find_bad_images(paths, check)
            seconds = time.perf_counter() - started
            checks[check] = {"img_per_s": len(paths) / seconds, "bad": len(bad), "seconds": seconds}

    medians = {name: statistics.median(values) for name, values in results.items()}
    raw = medians["raw_cv2"]
    ratios = {name: medians[name] / (raw * args.workers) for name in METHODS[1:-1]}
    ratios["ours_uint8_inproc"] = medians["ours_uint8_inproc"] / raw  # one process, no workers
    return {
        "config": {
            "images": int(len(paths)), "batch_size": args.batch_size, "workers": args.workers,
            "repeats": args.repeats, "image_size": 112, "quick": args.quick,
        },
        "machine": {
            "python": sys.version.split()[0], "torch": torch.__version__, "opencv": cv2.__version__,
            "albumentations": A.__version__, "platform": platform.platform(), "cpus": os.cpu_count(),
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "img_per_s": results,
        "median_img_per_s": medians,
        "ratio_to_raw_per_worker": ratios,
        "verify_images": checks,
        "batches_and_segments": segments,
        "median_cpu_us_per_image": {
            name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in CPU_US.items()
        },
        "gpu_augment": time_gpu_augment(args.batch_size),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1000 images, 3 repeats")
    parser.add_argument("--images", type=int, default=None, help="number of synthetic images (default 4000)")
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs per method (default 5)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers for the loader methods")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.images = args.images or (1000 if args.quick else 4000)
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.images < args.batch_size or args.workers < 1 or args.repeats < 1:
        parser.error("need --images >= --batch-size, --workers >= 1 and --repeats >= 1")

    report = run(args)
    med, ratio = report["median_img_per_s"], report["ratio_to_raw_per_worker"]
    print(
        f"\nmedian images/s over {args.repeats} repeats "
        f"({report['config']['images']} images, {args.workers} worker(s)):"
    )
    print(f"  {'method':<22} {'img/s':>9} {'ours/raw per worker':>20}")
    for name in METHODS:
        r = f"{ratio[name]:.2f}" if name in ratio else "-"
        print(f"  {name:<22} {med[name]:>9.0f} {r:>20}")
    print("  CPU µs per image (medians; workers summed):")
    for name, cpu in report["median_cpu_us_per_image"].items():
        workers = (
            f"workers {cpu['worker_user'] + cpu['worker_system']:.0f} (system {cpu['worker_system']:.0f}), "
            if "worker_user" in cpu
            else ""
        )
        print(f"    {name:<24} {workers}main process {cpu['main']:.0f}")
    for name, (batches, segments) in report["batches_and_segments"].items():
        print(f"  {name}: {batches} batches arrived in {segments} distinct shared-memory segments")
    for check, v in report["verify_images"].items():
        print(f"  verify_images={check}: {v['img_per_s']:.0f} img/s ({v['bad']} bad)")
    g = report["gpu_augment"]
    print(f"  gpu_augment on {g['device']}: {g['median_ms']:.2f} ms per batch of {g['batch_size']}")
    goal = ratio["ours_uint8"] >= 0.70
    print(
        f"goal ours_uint8/raw >= 0.70 per worker: {'met' if goal else 'NOT met'} ({ratio['ours_uint8']:.2f}; "
        f"the float CPU pipeline, data.uint8_batches=false: {ratio['ours_float']:.2f})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
