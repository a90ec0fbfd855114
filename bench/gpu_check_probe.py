"""Timing probes for bench/gpu_check.sh on one CUDA device; writes JSON for gpu_check_report.py.

- `kernel`: a fixed chain of matrix products timed three ways: the workload's own
  DeviceOps.synchronize at both edges (as train.py times core_s), CUDA events (the device's own
  time), and without the closing synchronize. If DeviceOps.synchronize waits for the device, the
  first is >= the events' time; the third shows the probe would see a clock that does not wait.
- `core`: per precision, the workload's core region (forward, loss, backward, step) of its own
  model at the runs' image shapes (bench/gpu_check.sh's synthetic set: three square batches, then
  one 3:2 batch), after a warm-up: CUDA events' time per iteration, and the wall time per
  iteration without synchronising (FlagPerf's way). The report compares each run's core_s per
  iteration with the events' time: a clock read before the device finished would be short of it.

Without CUDA it writes {"cuda": null} and exits 0: the report then skips the GPU checks.

    PYTHONPATH=. python bench/gpu_check_probe.py --out probe.json [--iters 12] [--size 800]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from workload.faster_rcnn.device import DeviceOps, Precision  # noqa: E402
from workload.faster_rcnn.model import build_model  # noqa: E402

PRECISIONS = ("fp32", "amp", "fp16")


def timed(fn: Callable[[], None], ops: DeviceOps) -> Tuple[float, float, float]:
    """(wall with DeviceOps.synchronize at both edges, CUDA events, wall without the closing
    synchronize) of one call each, in seconds."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ops.synchronize()
    t0 = time.perf_counter()
    start.record()
    fn()
    end.record()
    ops.synchronize()
    synced = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    unsynced = time.perf_counter() - t0
    ops.synchronize()
    return synced, start.elapsed_time(end) / 1000.0, unsynced


def kernel_probe(ops: DeviceOps, repeats: int = 5) -> Dict[str, Any]:
    a = torch.rand(4096, 4096, device=ops.device)
    b = torch.rand(4096, 4096, device=ops.device)

    def chain() -> None:
        for _ in range(40):
            torch.mm(a, b)

    chain()  # cuBLAS start-up
    totals = [0.0, 0.0, 0.0]
    for _ in range(repeats):
        for k, value in enumerate(timed(chain, ops)):
            totals[k] += value
    synced, gpu, unsynced = (t / repeats for t in totals)
    return {"synced_wall_s": synced, "gpu_s": gpu, "unsynced_wall_s": unsynced}


def batches(device: torch.device, size: int) -> List[Tuple[List[torch.Tensor], List[Any]]]:
    """The synthetic set's shapes: square size x size, every fourth image 3:2 landscape."""
    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.6], [0.05, 0.6, 0.3, 0.95]])
    out = []
    for width in (size, size, size, size * 3 // 2):
        scale = torch.tensor([width, size, width, size], dtype=torch.float32)
        images = [torch.rand(3, size, width, generator=gen).to(device) for _ in range(2)]
        targets = [
            {"boxes": (boxes * scale).to(device), "labels": torch.tensor([1, 2, 3], device=device)}
            for _ in range(2)
        ]
        out.append((images, targets))
    return out


def core_step(name: str, ops: DeviceOps, args: argparse.Namespace) -> Callable[[Any, Any], None]:
    """The workload's core region on its model for one precision, as train.py runs it."""
    precision = Precision(name, ops.device, 1024.0)
    model, _ = build_model(None, 91, None, args.size, args.max_size, 512)  # the runs' hparams
    model = precision.prepare_model(model.to(ops.device))
    model.train()
    params = precision.optimizer_params(model)
    optimizer = torch.optim.SGD(params, lr=0.0025, momentum=0.9, weight_decay=1e-4)

    def core(images: Any, targets: Any) -> None:
        with precision.autocast():
            loss = sum(model(precision.prepare_images(images), targets).values())
        optimizer.zero_grad(set_to_none=True)
        precision.backward_and_step(loss, optimizer)

    return core


def core_probe(name: str, ops: DeviceOps, args: argparse.Namespace) -> Dict[str, Any]:
    core = core_step(name, ops, args)
    data = batches(ops.device, args.size)
    synced = gpu = unsynced = 0.0
    for i in range(args.warmup + args.iters):
        times = timed(functools.partial(core, *data[i % len(data)]), ops)
        if i >= args.warmup:
            synced, gpu, unsynced = synced + times[0], gpu + times[1], unsynced + times[2]
    return {
        "precision": name,
        "iterations": args.iters,
        "synced_wall_s": synced,
        "gpu_s": gpu,
        "unsynced_wall_s": unsynced,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--iters", type=int, default=12, help="timed iterations per precision")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--size", type=int, default=800, help="the square images' side, px")
    parser.add_argument("--max-size", type=int, default=1333, help="the model's max_size")
    args = parser.parse_args()
    result: Dict[str, Any] = {"cuda": None, "torch": torch.__version__}
    if torch.cuda.is_available():
        ops = DeviceOps(torch.device("cuda", 0))
        result["cuda"] = {
            "name": ops.name(),
            "count": ops.count(),
            "version": torch.version.cuda,
            "total_mem_bytes": ops.total_memory(),
        }
        result["kernel"] = kernel_probe(ops)
        result["core"] = []
        for name in PRECISIONS:
            result["core"].append(core_probe(name, ops, args))
            torch.cuda.empty_cache()  # the next precision's model starts from a clean cache
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
