"""Time inference side by side: FaceEmbedder against calling the backbone directly, and ONNX Runtime against PyTorch.

Three measurements on the same pre-aligned 112×112 uint8 faces and the same randomly initialised backbone, each the
median of several repeats, in one run:

1. **direct**: the backbone called on pre-batched, pre-normalised float tensors, then L2-normalised (the floor:
   no input handling at all), in contiguous NCHW and in channels-last memory; the faster is the reference;
2. **FaceEmbedder (PyTorch)**: ``FaceEmbedder.from_checkpoint(...).embed(faces)`` on the uint8 array (layout
   change, normalisation, batching, L2 norm included); goal >= 0.9x the direct rate;
3. **FaceEmbedder (ONNX Runtime)**: the same call on the ONNX export (CPU execution provider), next to (2).

Usage::

    python scripts/bench_inference.py            # iresnet18, 512 faces, batch 64
    python scripts/bench_inference.py --quick    # 128 faces, fewer repeats (a smoke check)

Results are printed and written to ``bench_results/inference.json`` (git-ignored) with machine info.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from facetrain.inference.contract import CONTRACT_KEY, contract_from_config
from facetrain.inference.embedder import FaceEmbedder
from facetrain.inference.export import export_checkpoint
from facetrain.inference.model import CONFIG_KEY, build_backbone
from facetrain.utils.bench import machine_info, write_report

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench_results" / "inference.json"


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (allocator, oneDNN primitive caches, ONNX Runtime arenas)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _checkpoint(path: Path, model_name: str, embedding_size: int) -> torch.nn.Module:
    """A facetrain-format checkpoint of a randomly initialised backbone (what train.py would write)."""
    normalize = {"_target_": "albumentations.Normalize", "mean": [0.5] * 3, "std": [0.5] * 3}
    transform = {"_target_": "albumentations.Compose", "transforms": [normalize]}
    backbone_cfg = {
        "_target_": "facetrain.models.backbone.FaceBackbone", "model_name": model_name,
        "embedding_size": embedding_size, "pretrained": False, "dropout": 0.0, "input_size": 112,
    }  # fmt: skip
    config = {
        "model": {"backbone": backbone_cfg, "head": {}},
        "eval": {"lfw": {"flip": "none", "transform": transform}},
    }
    torch.manual_seed(0)
    backbone = build_backbone(backbone_cfg).eval()
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    contract = contract_from_config(config).to_dict()
    torch.save({"state_dict": state, CONFIG_KEY: config, CONTRACT_KEY: contract}, path)
    return backbone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 faces and fewer repeats")
    parser.add_argument("--model", default="iresnet18", help="backbone (timm or facetrain face trunk name)")
    parser.add_argument("--faces", type=int, default=None, help="faces per measurement (default 512; quick 128)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None, help="default 5; quick 3")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    n = args.faces or (128 if args.quick else 512)
    repeats = args.repeats or (3 if args.quick else 5)
    bs = args.batch_size
    faces = np.random.default_rng(0).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "bench.ckpt"
        backbone = _checkpoint(ckpt, args.model, 512)
        contract = export_checkpoint(ckpt, Path(tmp) / "onnx", "onnx", faces[:8], "random uint8 faces")
        torch_embedder = FaceEmbedder.from_checkpoint(ckpt)
        onnx_embedder = FaceEmbedder.from_export(Path(tmp) / "onnx")

        # The floor: tensors already batched and normalised, outside the timed region, in both memory layouts
        # (contiguous NCHW, and channels-last as FaceEmbedder uses); the faster one is the reference.
        channels_last = [
            torch.from_numpy(faces[i : i + bs].transpose(0, 3, 1, 2) / 127.5 - 1.0).float() for i in range(0, n, bs)
        ]
        layouts = {"direct_nchw": [b.contiguous() for b in channels_last], "direct_channels_last": channels_last}

        def direct(batches: list[torch.Tensor]) -> None:
            with torch.inference_mode():
                for batch in batches:
                    F.normalize(backbone(batch), dim=1)

        t_layouts = {k: _median_seconds(lambda b=b: direct(b), repeats) for k, b in layouts.items()}
        t_direct = min(t_layouts.values())
        t_torch = _median_seconds(lambda: torch_embedder.embed(faces, batch_size=bs), repeats)
        t_onnx = _median_seconds(lambda: onnx_embedder.embed(faces, batch_size=bs), repeats)
        agree = float(np.abs(torch_embedder.embed(faces[:16]) - onnx_embedder.embed(faces[:16])).max())

    times = {**t_layouts, "direct": t_direct, "embedder_torch": t_torch, "embedder_onnx": t_onnx}
    rate = {k: n / t for k, t in times.items()}
    results: dict[str, Any] = {
        "embeddings_per_s": rate,
        "embedder_vs_direct": rate["embedder_torch"] / rate["direct"],
        "goal_embedder_vs_direct": 0.9,
        "meets_goal": rate["embedder_torch"] / rate["direct"] >= 0.9,
        "onnx_vs_torch": rate["embedder_onnx"] / rate["embedder_torch"],
        "onnx_torch_max_abs_diff": agree,
        "export_parity_max_abs_diff": contract.export["parity"]["max_abs_diff"],
        "setup": {"model": args.model, "faces": n, "batch_size": bs, "input": "112x112", "embedding_size": 512},
        "machine": {**machine_info(), "onnxruntime": ort.__version__, "quick": args.quick, "repeats": repeats},
    }  # fmt: skip
    print(f"{args.model}, {n} faces of 112x112, batch {bs}, CPU ({torch.get_num_threads()} torch threads)")
    print(f"  backbone direct, NCHW tensors:         {rate['direct_nchw']:8.1f} embeddings/s")
    print(f"  backbone direct, channels-last:        {rate['direct_channels_last']:8.1f} embeddings/s")
    goal = "met" if results["meets_goal"] else "NOT met"
    print(f"  FaceEmbedder.embed, PyTorch:           {rate['embedder_torch']:8.1f} embeddings/s ", end="")
    print(f"({results['embedder_vs_direct']:.2f}x the faster direct; goal >= 0.9x: {goal})")
    print(f"  FaceEmbedder.embed, ONNX Runtime:      {rate['embedder_onnx']:8.1f} embeddings/s ", end="")
    print(f"({results['onnx_vs_torch']:.2f}x PyTorch; max abs diff {agree:.2e})")
    print(f"written to {write_report(args.out, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
