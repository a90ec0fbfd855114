"""Does the workload's core_s hold the GPU's work? Times the core region (forward, loss, backward,
step) of the workload's own model, precision and synchronisation (workload.faster_rcnn.device)
on one GPU three ways per iteration, and writes JSON:

- `synced_wall_s`: as train.py times it: synchronise, clock, core, synchronise, clock;
- `gpu_s`: CUDA events recorded at the region's two edges: the device's own time for it;
- `unsynced_wall_s`: FlagPerf's way: no synchronisation before the second clock.

If core_s is synchronised, synced wall >= GPU time (the host can only add to it); the unsynced
wall shows what is hidden without it. Used by bench/gpu_check.sh (docs/gpu.md).

    PYTHONPATH=. python bench/gpu_check_probe.py --out probe.json [--iters 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from workload.faster_rcnn.device import DeviceOps, Precision  # noqa: E402
from workload.faster_rcnn.model import build_model  # noqa: E402


def batch(device: torch.device) -> tuple[List[torch.Tensor], List[Dict[str, torch.Tensor]]]:
    """Two 800x1067 images with three boxes each: the model resizes them to 800 x 1067."""
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 800, 1067, generator=gen).to(device) for _ in range(2)]
    boxes = torch.tensor(
        [[50.0, 60.0, 300.0, 400.0], [400.0, 100.0, 700.0, 500.0], [10, 500, 200, 780]]
    )
    targets = [
        {"boxes": boxes.to(device), "labels": torch.tensor([1, 2, 3], device=device)}
        for _ in range(2)
    ]
    return images, targets


def measure(name: str, iters: int, warmup: int) -> Dict[str, Any]:
    device = torch.device("cuda", 0)
    ops = DeviceOps(device)
    precision = Precision(name, device, 1024.0)
    model, _ = build_model(None, 91, None, 800, 1333, 512)
    model = precision.prepare_model(model.to(device))
    model.train()
    params = precision.optimizer_params(model)
    optimizer = torch.optim.SGD(params, lr=0.0025, momentum=0.9, weight_decay=1e-4)
    images, targets = batch(device)
    images = precision.prepare_images(images)
    synced = gpu = unsynced = 0.0

    def core() -> None:
        with precision.autocast():
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        precision.backward_and_step(loss, optimizer)

    for i in range(warmup + iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ops.synchronize()
        t0 = time.perf_counter()
        start.record()
        core()
        end.record()
        ops.synchronize()
        t1 = time.perf_counter()
        ops.synchronize()
        t2 = time.perf_counter()
        core()  # FlagPerf's timing of the same region: the clock is read without waiting
        t3 = time.perf_counter()
        if i >= warmup:
            synced += t1 - t0
            gpu += start.elapsed_time(end) / 1000.0
            unsynced += t3 - t2
    return {
        "precision": name,
        "iterations": iters,
        "synced_wall_s": synced,
        "gpu_s": gpu,
        "unsynced_wall_s": unsynced,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check_probe: no CUDA device", file=sys.stderr)
        return 2
    results = [measure(name, args.iters, args.warmup) for name in ("fp32", "amp")]
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    for r in results:
        print(
            "probe {precision}: core per iteration synced wall {:.1f} ms, GPU events {:.1f} ms, "
            "unsynced wall {:.1f} ms".format(
                1000 * r["synced_wall_s"] / r["iterations"],
                1000 * r["gpu_s"] / r["iterations"],
                1000 * r["unsynced_wall_s"] / r["iterations"],
                precision=r["precision"],
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
