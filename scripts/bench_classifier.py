"""Sharded classifier at scale on CPU: replicated vs model parallel vs Partial FC 0.1, side by side in one run.

Every configuration (classifier layout × class count) runs in its own 2 gloo processes, so each has its own peak RSS.
A step is what training does around the classifier: a tiny backbone (one D×D linear layer, wrapped in
``DistributedDataParallel``) on random inputs, the classifier (ArcFace margin), backward, Partial FC's row update,
SGD with momentum. Measured per configuration: the median step time, the peak RSS of each process, the bytes DDP
all-reduces per step (:func:`facetrain.classifier.ddp.count_allreduce_bytes`) and the classifier's memory per process
(weights, gradients, momentum, taken from the tensors after a step). ``replicated`` holds the whole C×D matrix in each
process and lets DDP all-reduce its gradient; it runs only where its estimated footprint fits the memory available
(otherwise its classifier memory, 3·C·D·4 bytes, is reported as computed, not measured).

Printed ratios (the goals of issue 15): per-process classifier memory of model parallel ÷ (replicated ÷ world) at the
largest class count (≤ 1.10), Partial FC 0.1 ÷ model parallel step time there (≤ 0.35), and bytes all-reduced per
step at the largest ÷ the smallest class count (1.0: they must not grow with C).

Usage::

    python scripts/bench_classifier.py            # 100,000 and 1,000,000 classes, D 512, batch 128 per process
    python scripts/bench_classifier.py --quick    # a smoke check: 2,000 and 20,000 classes, D 64, batch 16

Writes ``bench_results/classifier.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from facetrain.classifier import ShardedClassifier
from facetrain.classifier.ddp import count_allreduce_bytes, exclude_from_ddp
from facetrain.losses import ArcFaceHead
from facetrain.utils.bench import machine_info, median, write_report

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench_results" / "classifier.json"
MODES = {"replicated": None, "model_parallel": 1.0, "partial_fc": 0.1}  # mode: sample rate (None: replicated head)


class BenchModel(nn.Module):
    """A one-layer backbone and the classifier; ``forward`` returns the loss (what DDP wraps in training)."""

    def __init__(self, classifier: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = nn.Linear(dim, dim)
        self.head = classifier

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x), labels).loss


def build(mode: str, num_classes: int, dim: int) -> BenchModel:
    """The model of one configuration, its classifier laid out for the running process group."""
    head = functools.partial(ArcFaceHead, scale=64.0, margin=0.5)
    sample_rate = MODES[mode]
    if sample_rate is None:
        return BenchModel(head(embedding_size=dim, num_classes=num_classes), dim)
    classifier = ShardedClassifier(head, dim, num_classes, sample_rate=sample_rate, seed=0)
    classifier.configure_shards()
    model = BenchModel(classifier, dim)
    exclude_from_ddp(model, classifier)  # its blocks differ per rank: never all-reduced
    return model


def classifier_bytes(model: BenchModel, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of the classifier's weights, gradients and momentum held by this process (right after a backward).

    Partial FC's gradient is that of the sampled rows (its block gets none) and its momentum its ``weight_momentum``.
    """
    head = model.head
    weight = head.weight
    grad = weight.grad
    sampled = getattr(head, "sampled", None)
    if grad is None and sampled is not None and sampled[1].grad is not None:
        grad = sampled[1].grad
    momentum = getattr(head, "weight_momentum", None)
    if momentum is None:
        momentum = optimizer.state.get(weight, {}).get("momentum_buffer")

    def size(t: torch.Tensor | None) -> int:
        return 0 if t is None else t.numel() * t.element_size()

    out = {"weights": size(weight), "grads": size(grad), "momentum": size(momentum)}
    return out | {"total": sum(out.values())}


def _worker(rank: int, world: int, port: int, job: dict[str, Any], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(job["threads"])
    start_rss_mb = current_rss_mb()
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)
        model = build(job["mode"], job["num_classes"], job["dim"])
        ddp = DistributedDataParallel(model)
        counter = count_allreduce_bytes(ddp)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(1000 + rank)
        times, memory = [], {}
        for step in range(job["warmup"] + job["steps"]):
            x = torch.randn(job["batch_size"], job["dim"], generator=gen)
            labels = torch.randint(0, job["num_classes"], (job["batch_size"],), generator=gen)
            dist.barrier()  # every rank starts the step together: the time is the step's, not a straggler's wait
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            ddp(x, labels).backward()
            if step == job["warmup"] + job["steps"] - 1:
                memory = classifier_bytes(model, optimizer)
            getattr(model.head, "step_rows", lambda _opt: None)(optimizer)  # Partial FC's sampled rows
            optimizer.step()
            times.append(time.perf_counter() - start)
            if step == job["warmup"] - 1:
                counted = counter.total_bytes
        if job["warmup"] == 0:
            counted = 0
        result = {
            "rank": rank,
            "step_times_s": times[job["warmup"] :],
            "allreduce_bytes_per_step": (counter.total_bytes - counted) / job["steps"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
            "start_rss_mb": start_rss_mb,
            "classifier_bytes": memory,
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def current_rss_mb() -> float:
    """This process's resident set now (the baseline of torch and facetrain's imports, before any classifier)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def estimated_bytes(mode: str, num_classes: int, dim: int, batch_size: int, world: int) -> int:
    """Rough peak bytes of all processes together: weights, gradients, momentum and DDP's gradient bucket for a
    replicated head, plus five B×C logit-sized temporaries per process (cosines, margin, logits, softmax, their
    gradients)."""
    rows = num_classes if mode == "replicated" else -(-num_classes // world)
    batch = batch_size if mode == "replicated" else batch_size * world
    copies = 4 if mode == "replicated" else 3
    batch_rows = max(int(MODES["partial_fc"] * rows), batch) + batch if mode == "partial_fc" else rows
    return world * 4 * (copies * rows * dim + 5 * batch * batch_rows)


def available_bytes() -> int:
    """``MemAvailable`` from /proc/meminfo (what can be allocated without swapping)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def run_config(args: argparse.Namespace, mode: str, num_classes: int) -> dict[str, Any]:
    """One configuration in ``args.world`` fresh processes; the ranks' results merged."""
    job = {
        "mode": mode,
        "num_classes": num_classes,
        "dim": args.dim,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": max(1, (os.cpu_count() or 1) // args.world),
    }
    with tempfile.TemporaryDirectory(prefix="bench_classifier_") as tmp:
        # fork: no re-import per configuration; the children start from this process's (import-only) memory
        mp.start_processes(_worker, (args.world, _free_port(), job, tmp), nprocs=args.world, start_method="fork")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(args.world)]
    step_time = median([max(ts) for ts in zip(*(r["step_times_s"] for r in ranks), strict=True)])
    return {
        "mode": mode,
        "num_classes": num_classes,
        "measured": True,
        "step_time_s_median": round(step_time, 5),
        "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in ranks],
        "start_rss_mb": [round(r["start_rss_mb"], 1) for r in ranks],
        "allreduce_bytes_per_step": ranks[0]["allreduce_bytes_per_step"],
        "classifier_bytes_per_process": [r["classifier_bytes"] for r in ranks],
    }


def skipped(args: argparse.Namespace, mode: str, num_classes: int, need: int, have: int) -> dict[str, Any]:
    """A configuration too large for this machine: its classifier memory computed (weights, gradients, momentum)."""
    total = 3 * num_classes * args.dim * 4
    return {
        "mode": mode,
        "num_classes": num_classes,
        "measured": False,
        "reason": f"estimated {need / 2**30:.1f} GiB > {have / 2**30:.1f} GiB available",
        "classifier_bytes_per_process": [{"total": total, "computed": True}] * args.world,
    }


def ratios(results: list[dict[str, Any]], world: int) -> dict[str, Any]:
    """The issue's goals, from the results of one run."""
    by = {(r["mode"], r["num_classes"]): r for r in results}
    counts = sorted({r["num_classes"] for r in results})
    big, small = counts[-1], counts[0]
    out: dict[str, Any] = {"num_classes": big}
    mp_mem = max(b["total"] for b in by[("model_parallel", big)]["classifier_bytes_per_process"])
    rep_mem = by[("replicated", big)]["classifier_bytes_per_process"][0]["total"]
    out["model_parallel_memory_over_replicated_per_world"] = round(mp_mem / (rep_mem / world), 4)
    out["replicated_memory_measured"] = by[("replicated", big)]["measured"]
    pfc, mpar = by[("partial_fc", big)], by[("model_parallel", big)]
    out["partial_fc_over_model_parallel_step_time"] = round(pfc["step_time_s_median"] / mpar["step_time_s_median"], 4)
    for mode in MODES:
        if by[(mode, big)]["measured"] and by[(mode, small)]["measured"]:
            growth = by[(mode, big)]["allreduce_bytes_per_step"] / by[(mode, small)]["allreduce_bytes_per_step"]
            out[f"{mode}_allreduce_bytes_{big}_over_{small}"] = round(growth, 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default="100000,1000000", help="comma-separated class counts")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128, help="per process")
    parser.add_argument("--world", type=int, default=2, help="processes (gloo)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--quick", action="store_true", help="2,000 / 20,000 classes, D 64, batch 16, 3 steps")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.classes, args.dim, args.batch_size, args.steps, args.warmup = "2000,20000", 64, 16, 3, 1
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {sorted(MODES)}")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step allocates the momentum)")
    results = []
    for num_classes in sorted(int(c) for c in args.classes.split(",")):
        for mode in modes:
            need, have = estimated_bytes(mode, num_classes, args.dim, args.batch_size, args.world), available_bytes()
            if need > 0.8 * have:
                results.append(skipped(args, mode, num_classes, need, have))
                print(f"{mode} C={num_classes:,}: skipped, {results[-1]['reason']}", flush=True)
                continue
            results.append(run_config(args, mode, num_classes))
            r = results[-1]
            print(
                f"{mode} C={num_classes:,}: {r['step_time_s_median'] * 1e3:.1f} ms/step, peak RSS "
                f"{r['peak_rss_mb']} MB (after imports {r['start_rss_mb']} MB), all-reduced "
                f"{r['allreduce_bytes_per_step'] / 2**20:.2f} MiB/step, classifier "
                f"{max(b['total'] for b in r['classifier_bytes_per_process']) / 2**20:.1f} MiB/process",
                flush=True,
            )
    report: dict[str, Any] = {
        "goal": "at the largest C: model_parallel_memory_over_replicated_per_world <= 1.10, "
        "partial_fc_over_model_parallel_step_time <= 0.35, all-reduced bytes per step do not grow with C (ratio 1.0 "
        "for model_parallel and partial_fc)",
        "machine": machine_info("cpu") | {"memory_gib": round(available_bytes() / 2**30, 1)},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
        "quick": args.quick,
    }
    if set(modes) == set(MODES):
        report["ratios"] = ratios(results, args.world)
        print("ratios:", json.dumps(report["ratios"]))
    path = write_report(args.out, report)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
