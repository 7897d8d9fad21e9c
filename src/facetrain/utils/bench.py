"""What every benchmark script records beside its numbers: the machine, and medians of noisy timings."""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from facetrain.utils.io import write_json_atomic

__all__ = ["machine_info", "median", "write_report"]


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What the numbers depend on: the torch build, the CPU, its thread counts and, on CUDA, the GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def median(values: list[float]) -> float:
    """The median (the machines these run on are shared and noisy: means are pulled by outliers)."""
    return float(statistics.median(values))


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Writes a benchmark's JSON (atomically, so a killed run never leaves half a file) and returns its path."""
    json.dumps(report)  # fail here, naming nothing half-written, if something is not JSON-able
    return write_json_atomic(Path(path), report)
