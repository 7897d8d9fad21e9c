"""Training throughput: facetrain's real training loop against a minimal plain PyTorch loop, interleaved in one run.

The facetrain side is what ``python train.py`` runs: the Lightning module, the callbacks and the loggers built from
the composed config (``configs/train.yaml`` with the overrides given), minus the evaluation sets (they run between
epochs, not per step). The plain side is the loop anyone would write: ``zero_grad``, forward of the same backbone and
head under the same autocast, ``backward``, the same optimizer and LR schedule, the head's schedule step. Both train
on the same batches, held in memory on the device, so the data loader is not what is measured (``--loader`` measures
it separately). Rounds alternate which side goes first; each side's images/s is measured over its steps after a
warm-up, and ``lightning_over_plain`` is the median over rounds of facetrain img/s ÷ plain img/s.

Also reported: the time split per step from Lightning's ``SimpleProfiler`` (host time: on a GPU the host runs ahead,
so the split shows where the host waits), the host reads per step outside logging steps (CUDA's own sync counter on
a GPU, :class:`facetrain.training.host_sync.HostReadCounter` on a CPU), and on CUDA the FLOPs of one step
(``torch.utils.flop_counter``), the achieved TFLOP/s and the fraction of the device's dense peak.

Usage::

    python scripts/bench_train.py                      # CPU: resnet18, batch 64, 112 px, fp32 (the CPU goal >= 0.97)
    python scripts/bench_train.py --quick              # a smoke check: batch 16, few steps
    python scripts/bench_train.py --device cuda --precision bf16-mixed --backbones iresnet50,iresnet100 \\
        --batch-size 256 --overrides trainer=gpu       # the GPU figures
    python scripts/bench_train.py --loader             # also: the real loader on the synthetic tree

Writes ``bench_results/train.json`` with the top-level key ``lightning_over_plain`` (of the first backbone).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from torch.utils.flop_counter import FlopCounterMode

from facetrain.callbacks.host_reads import HostReadsPerStep
from facetrain.training.host_sync import cuda_sync_counter
from facetrain.utils.bench import machine_info, median, write_report
from facetrain.utils.instantiate import instantiate, instantiate_named

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench_results" / "train.json"
NUM_CLASSES = 10_572  # CASIA-WebFace after the SphereFace exclusions: the classifier the papers train

#: Dense (no sparsity) bf16 tensor-core peak in FLOP/s from the vendors' data sheets, matched on the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}


def compose_config(backbone: str, batch_size: int, image_size: int, overrides: list[str], out: Path) -> DictConfig:
    """``configs/train.yaml`` as ``python train.py backbone=<backbone> ...`` composes it, run directory in ``out``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={out}",
                f"backbone={backbone}",
                f"data.batch_size={batch_size}",
                "eval=[]",
                "callbacks.model_checkpoint.monitor=null",  # no evaluation set to monitor
                *overrides,
            ],
        )
    with open_dict(cfg):
        if "input_size" in cfg.backbone:  # face backbones take their input size from the config
            cfg.backbone.input_size = image_size
    return cfg


def memory_batches(
    cfg: DictConfig, image_size: int, device: torch.device, count: int = 4, num_classes: int = NUM_CLASSES
) -> list[tuple[Any, Any]]:
    """A few fixed batches on the device: what the loader would deliver (float, normalised), loader cost excluded."""
    gen = torch.Generator().manual_seed(0)
    batch_size = int(cfg.data.batch_size)
    return [
        (
            torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device),
            torch.randint(0, num_classes, (batch_size,), generator=gen).to(device),
        )
        for _ in range(count)
    ]


class Cycle(torch.utils.data.IterableDataset):
    """Yields the in-memory batches round-robin, ``steps`` of them (a "loader" that costs nothing)."""

    def __init__(self, batches: list[tuple[Any, Any]], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return (self.batches[i % len(self.batches)] for i in range(self.steps))

    def __len__(self) -> int:
        return self.steps


def images_per_second(stamps: list[float], batch_size: int, device: torch.device, robust: bool = True) -> float:
    """Throughput from step-start timestamps: on a CPU ``batch / median step time`` (a step slowed by another process
    on this shared machine does not move a median); on CUDA the host runs ahead of the device, so only the two
    synchronised end points count, ``steps · batch / elapsed``, as they do with ``robust=False`` (a loader's waits
    come every few steps: a median would hide them)."""
    if device.type == "cuda" or not robust:
        return (len(stamps) - 1) * batch_size / (stamps[-1] - stamps[0])
    return batch_size / median([b - a for a, b in zip(stamps, stamps[1:])])


def _now(device: torch.device, sync: bool) -> float:
    if sync and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StepTimer(pl.Callback):
    """Start time of every step from ``warmup`` to ``last`` (see :func:`images_per_second`); on CUDA the device is
    synchronised at those two steps only, so the timer adds no synchronisation to the steps it measures."""

    def __init__(self, warmup: int, last: int, device: torch.device) -> None:
        self.warmup, self.last, self.device = warmup, last, device
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self.warmup <= trainer.global_step <= self.last:
            self.stamps.append(_now(self.device, trainer.global_step in (self.warmup, self.last)))


def facetrain_run(
    cfg: DictConfig, batches: list[tuple[Any, Any]], steps: int, warmup: int, device: torch.device, **trainer: Any
) -> tuple[float, pl.Trainer, list[pl.Callback]]:
    """Images/s of the facetrain loop (module, callbacks, loggers from ``cfg``) over ``steps`` steps after warm-up."""
    trainer_robust = trainer.pop("robust", True)
    timer = StepTimer(warmup, warmup + steps, device)
    model = instantiate(cfg.model, num_classes=trainer.pop("num_classes", NUM_CLASSES))
    # Counters first, so that the epoch-end work of the other callbacks falls outside every step's window.
    callbacks = [*trainer.pop("extra_callbacks", []), timer, *instantiate_named(cfg.get("callbacks"))]
    fit = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=instantiate_named(cfg.get("logger")) or False,
        max_steps=warmup + steps + 1,
        max_epochs=-1,
        enable_model_summary=False,
        **trainer,
    )
    fit.fit(model, train_dataloaders=torch.utils.data.DataLoader(Cycle(batches, warmup + steps + 1), batch_size=None))
    return images_per_second(timer.stamps, len(batches[0][1]), device, trainer_robust), fit, callbacks


def plain_run(cfg: DictConfig, batches: list[tuple[Any, Any]], steps: int, warmup: int, device: torch.device) -> float:
    """Images/s of the minimal loop with the same backbone, head, optimizer, schedule and precision."""
    backbone = instantiate(cfg.backbone).to(device)
    head = instantiate(cfg.loss)(embedding_size=backbone.embedding_size, num_classes=NUM_CLASSES).to(device)
    channels_last = bool(cfg.model.get("channels_last", False))
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = instantiate(cfg.optimizer)(params)
    total = warmup + steps + 1
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=total) if cfg.get("scheduler") else None
    autocast = autocast_for(str(cfg.trainer.precision), device)
    head.on_fit_start(total)  # the run length, as the training module passes it (a run-length c schedule needs it)
    backbone.train()
    head.train()
    stamps: list[float] = []
    for step in range(total):
        if warmup <= step <= warmup + steps:  # the same steps as StepTimer: starts of steps warmup .. warmup+steps
            stamps.append(_now(device, step in (warmup, warmup + steps)))
        images, labels = batches[step % len(batches)]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = head(backbone(images), labels).loss
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        head.on_optimizer_step()
    return images_per_second(stamps, len(batches[0][1]), device)


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    """The autocast that Lightning's ``precision`` applies: bf16 for ``bf16-mixed``, none for ``32-true``."""
    if precision == "bf16-mixed":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("32-true", "32"):
        return lambda: torch.autocast(device.type, enabled=False)
    raise SystemExit(
        f"--precision {precision!r}: the plain loop supports 32-true and bf16-mixed (16-mixed needs a "
        "GradScaler on both sides)"
    )


def profile_split(cfg: DictConfig, batches: list[tuple[Any, Any]], steps: int, device: torch.device) -> dict[str, Any]:
    """Milliseconds per step by phase, from Lightning's SimpleProfiler over ``steps`` steps (host time)."""
    profiler = pl.profilers.SimpleProfiler()
    facetrain_run(cfg, batches, steps, 1, device, profiler=profiler)
    durations = {name: sum(times[1:]) / max(1, len(times) - 1) for name, times in profiler.recorded_durations.items()}

    def total(predicate: Callable[[str], bool]) -> float:
        return sum(v for k, v in durations.items() if predicate(k))

    forward = total(lambda k: k.endswith("]SingleDeviceStrategy.training_step") or k.endswith(".training_step"))
    backward = total(lambda k: k.endswith(".backward") and "Strategy" in k)
    # Lightning runs forward and backward inside the optimizer step's closure; the optimizer's own time is the rest.
    step = total(lambda k: k.startswith("[LightningModule]") and k.endswith(".optimizer_step"))
    callbacks = total(lambda k: k.startswith("[Callback]") and "batch" in k)
    split = {
        "data_wait": total(lambda k: k.endswith("train_dataloader_next")),
        "forward": forward,
        "backward": backward,
        "optimizer": max(0.0, step - forward - backward),
        "callbacks": callbacks,
        "run_training_batch": total(lambda k: k == "run_training_batch"),
    }
    return {k: round(v * 1e3, 3) for k, v in split.items()}


def host_reads_per_step(cfg: DictConfig, batches: list[tuple[Any, Any]], device: torch.device) -> dict[str, Any]:
    """Host reads (CUDA: synchronisations) on steps that do not log, with ``trainer.log_every_n_steps=4``."""
    steps, log_every = 12, 4
    if device.type == "cuda":
        with cuda_sync_counter() as messages:
            counts = _sync_counts_cuda(cfg, batches, steps, log_every, device)
        return {"method": "torch.cuda.set_sync_debug_mode", "per_quiet_step": counts, "messages": messages[:5]}
    per_step = HostReadsPerStep()
    facetrain_run(cfg, batches, steps, 1, device, log_every_n_steps=log_every, extra_callbacks=[per_step])
    quiet = [reads for step, logging, reads in per_step.steps[1:] if not logging]
    return {"method": "HostReadCounter", "per_quiet_step": quiet, "max": max(quiet, default=0)}


def _sync_counts_cuda(
    cfg: DictConfig, batches: list[tuple[Any, Any]], steps: int, log_every: int, device: torch.device
) -> list[int]:
    """Synchronisations CUDA reports per non-logging step (after the first update, which reads on the host)."""
    import warnings

    counts: list[int] = []

    class PerStep(pl.Callback):
        """Synchronisation warnings from one step's start to the next one's (as HostReadsPerStep counts reads)."""

        caught: Any = None

        def _close(self) -> None:
            if self.caught is not None:
                self.caught.__exit__(None, None, None)
                if self.step > 1 and not self.logging:
                    counts.append(sum("synchroniz" in str(w.message).lower() for w in self.records))
                self.caught = None

        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            self._close()
            self.step, self.logging = trainer.global_step, (trainer.global_step + 1) % log_every == 0
            self.caught = warnings.catch_warnings(record=True)
            self.records = self.caught.__enter__()
            warnings.simplefilter("always")

        def on_train_epoch_end(self, *args: Any) -> None:
            self._close()

    facetrain_run(cfg, batches, steps, 1, device, log_every_n_steps=log_every, extra_callbacks=[PerStep()])
    return counts


def step_flops(cfg: DictConfig, batches: list[tuple[Any, Any]], device: torch.device) -> int:
    """FLOPs of one training step (forward + backward of backbone and head), counted by torch's flop counter."""
    backbone = instantiate(cfg.backbone).to(device)
    head = instantiate(cfg.loss)(embedding_size=backbone.embedding_size, num_classes=NUM_CLASSES).to(device)
    images, labels = batches[0]
    with FlopCounterMode(display=False) as counter, autocast_for(str(cfg.trainer.precision), device)():
        head(backbone(images), labels).loss.backward()
    return int(counter.get_total_flops())


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for the training precision (bf16 tensor cores), None when unknown (CPUs)."""
    if device.type != "cuda" or precision != "bf16-mixed":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def bench_backbone(args: argparse.Namespace, backbone: str, out: Path) -> dict[str, Any]:
    """Interleaved rounds for one backbone, plus the profile split, host reads and FLOPs."""
    device = torch.device(args.device)
    overrides = [
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.precision={args.precision}",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    cfg = compose_config(backbone, args.batch_size, args.image_size, overrides, out / backbone)
    batches = memory_batches(cfg, args.image_size, device)
    ours: list[float] = []
    plain: list[float] = []
    for round_ in range(args.rounds):
        order = ("facetrain", "plain") if round_ % 2 == 0 else ("plain", "facetrain")
        for side in order:
            if side == "facetrain":
                ours.append(facetrain_run(cfg, batches, args.steps, args.warmup, device)[0])
            else:
                plain.append(plain_run(cfg, batches, args.steps, args.warmup, device))
        print(
            f"  {backbone} round {round_ + 1}: facetrain {ours[-1]:.1f} img/s, plain {plain[-1]:.1f} img/s, "
            f"ratio {ours[-1] / plain[-1]:.3f}",
            flush=True,
        )
    ratios = [a / b for a, b in zip(ours, plain)]
    result: dict[str, Any] = {
        "backbone": backbone,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "precision": args.precision,
        "overrides": overrides,
        "facetrain_img_per_s": [round(v, 2) for v in ours],
        "plain_img_per_s": [round(v, 2) for v in plain],
        "facetrain_img_per_s_median": round(median(ours), 2),
        "plain_img_per_s_median": round(median(plain), 2),
        "lightning_over_plain": round(median(ratios), 4),
        "ratio_per_round": [round(r, 4) for r in ratios],
        "ms_per_step_split": profile_split(cfg, batches, max(4, args.steps // 2), device),
        "host_reads": host_reads_per_step(cfg, batches, device),
    }
    flops = step_flops(cfg, batches, device)
    achieved = flops * median(ours) / args.batch_size
    result.update(step_gflops=round(flops / 1e9, 2), achieved_tflops=round(achieved / 1e12, 3))
    peak = peak_flops(device, args.precision)
    if peak is not None:
        result.update(peak_tflops=peak / 1e12, fraction_of_peak=round(achieved / peak, 4))
    if args.loader:
        result["loader"] = loader_share(args, backbone, device, out / f"{backbone}_loader")
    return result


def loader_share(args: argparse.Namespace, backbone: str, device: torch.device, out: Path) -> dict:
    """Images/s with the real loader on the synthetic tree (data=synthetic, its workers and transforms) against the
    same run on in-memory batches, both as elapsed time over the steps (the loader's waits come every few steps)."""
    overrides = [
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.precision={args.precision}",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    cfg = compose_config(backbone, args.batch_size, args.image_size, overrides, out)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # generates the synthetic tree on first use
    timer = StepTimer(args.warmup, args.warmup + args.steps, device)
    model = instantiate(cfg.model, num_classes=datamodule.num_classes)
    fit = instantiate(
        cfg.trainer,
        callbacks=[timer, *instantiate_named(cfg.get("callbacks"))],
        logger=instantiate_named(cfg.get("logger")) or False,
        max_steps=args.warmup + args.steps + 1,
        max_epochs=-1,
        enable_model_summary=False,
    )
    fit.fit(model, datamodule=datamodule)
    ips = images_per_second(timer.stamps, args.batch_size, device, robust=False)
    batches = memory_batches(cfg, args.image_size, device, num_classes=datamodule.num_classes)
    memory_ips = facetrain_run(
        cfg, batches, args.steps, args.warmup, device, robust=False, num_classes=datamodule.num_classes
    )[0]
    return {
        "img_per_s": round(ips, 2),
        "in_memory_img_per_s": round(memory_ips, 2),
        "loader_share": round(max(0.0, 1 - ips / memory_ips), 4),
        "num_workers": int(cfg.data.num_workers),
        "uint8_batches": bool(cfg.data.uint8_batches),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="resnet18", help="comma-separated backbone configs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--precision", default=None, help="32-true (CPU default) or bf16-mixed (CUDA default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loader", action="store_true", help="also measure the real loader on the synthetic tree")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides, e.g. trainer=gpu")
    parser.add_argument("--quick", action="store_true", help="batch 16, 3 steps, 2 rounds: a smoke check")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.precision is None:
        args.precision = "bf16-mixed" if args.device.startswith("cuda") else "32-true"
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.rounds = 16, 3, 1, 2
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for backbone in args.backbones.split(","):
            results.append(bench_backbone(args, backbone, Path(tmp)))
    report = {
        "lightning_over_plain": results[0]["lightning_over_plain"],
        "goal": "lightning_over_plain >= 0.97; on a GPU also 0 host syncs per non-logging step and, for iresnet50 at "
        "batch 256 bf16 112 px, >= 35 % of the dense bf16 peak",
        "machine": machine_info(args.device),
        "results": results,
        "quick": args.quick,
    }
    path = write_report(args.out, report)
    for r in results:
        print(
            f"{r['backbone']}: facetrain {r['facetrain_img_per_s_median']} img/s, plain {r['plain_img_per_s_median']} "
            f"img/s, lightning_over_plain {r['lightning_over_plain']} (rounds {r['ratio_per_round']}); "
            f"split ms {r['ms_per_step_split']}; host reads on quiet steps {r['host_reads']['per_quiet_step']}; "
            f"{r['achieved_tflops']} TFLOP/s"
            + (f" = {r['fraction_of_peak']:.1%} of peak" if "fraction_of_peak" in r else "")
        )
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
