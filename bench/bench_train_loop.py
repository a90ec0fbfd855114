"""Cost of the benchmark harness: iterations/s of our training loop (workload.faster_rcnn.train:
device synchronisation, timers, learning-rate schedule, loss bookkeeping, progress events) against
a minimal plain loop in the torchvision-reference style (forward, loss sum, backward, step). Same
model, data, batch and process; rounds interleaved; medians compared. Target: ratio >= 0.97.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/bench_train_loop.py           # CPU, tiny
    PYTHONPATH=. python bench/bench_train_loop.py --image-size 800x1333 --iters 50 --workers 4

The second line is the accelerator run (full-size images). It prints one line per round, the
medians, the ratio, and from our loop p_core (one process) and the peak device memory.
On the CPU the clock is the process CPU time, so other load on a shared machine does not decide
the ratio; on an accelerator it is wall time.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from workload.faster_rcnn import coco, data, hparams  # noqa: E402
from workload.faster_rcnn.comm import Comm  # noqa: E402
from workload.faster_rcnn.device import DeviceOps, Precision, choose_device  # noqa: E402
from workload.faster_rcnn.model import build_model  # noqa: E402
from workload.faster_rcnn.progress import Events  # noqa: E402
from workload.faster_rcnn.synth import generate  # noqa: E402
from workload.faster_rcnn.train import Trainer  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--image-size", default="64x64", help="HxW: image height (= min size) and max size")
    a("--iters", type=int, default=4, help="timed iterations per loop per round")
    a("--rounds", type=int, default=9)
    a("--warmup-iters", type=int, default=2)
    a("--batch-size", type=int, default=2)
    a("--workers", type=int, default=0)
    a("--device", default="auto")
    a("--precision", default="fp32", choices=hparams.PRECISIONS)
    a("--box-batch-size", type=int, default=512, help="RoI samples per image (reference: 512)")
    a("--log-every", type=int, default=20, help="our loop's progress event period")
    a("--threads", type=int, default=None)
    a("--data-dir", default=None, help="a COCO 2017 layout; default: a generated synthetic one")
    a("--clock", choices=("auto", "wall", "process"), default="auto")
    return p.parse_args()


class Bench:
    def __init__(self, args: argparse.Namespace, data_dir: str) -> None:
        self.args = args
        height, width = (int(v) for v in args.image_size.lower().split("x"))
        self.device = choose_device(args.device, 0)
        self.ops = DeviceOps(self.device)
        self.precision = Precision(args.precision, self.device, 1024.0)
        clock = args.clock
        if clock == "auto":
            clock = "process" if self.device.type == "cpu" else "wall"
        self.clock_name = clock
        self.clock: Callable[[], float] = (
            time.process_time if clock == "process" else time.perf_counter
        )
        layout = coco.find_layout(data_dir, need_val=False)
        gt = coco.load_coco(layout.train_annotations)
        dataset = data.CocoDetection(layout.train_images, gt, coco.train_image_ids(gt), flip=True)
        pin = self.device.type == "cuda"
        self.loader, self.sampler = data.train_loader(
            dataset, args.batch_size, 3, args.workers, 0, 1, 0, pin
        )
        torch.manual_seed(0)
        model, _ = build_model(None, 91, None, height, max(height, width), args.box_batch_size)
        self.model = self.precision.prepare_model(model.to(self.device)).train()
        params = self.precision.optimizer_params(self.model)
        # a tiny learning rate: the same arithmetic, and nothing diverges over many rounds
        self.optimizer = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)
        hp: Dict[str, Any] = dict(hparams.defaults(), lr=1e-5, epochs=1)
        self.trainer = Trainer(
            self.model, self.optimizer, self.loader, self.sampler, self.ops, self.precision,
            Comm(1, self.device, None), Events(enabled=True, stream=io.StringIO()), hp,
            warmup_iters=0, planned_iters=args.iters, log_every=args.log_every,
        )  # fmt: skip
        self.size = f"{height}x{width}"

    def plain(self, n: int, epoch: int) -> float:
        """The reference-style loop; one synchronisation at the end so the time is complete."""
        device = self.device
        self.sampler.set_epoch(epoch)
        batches = iter(self.loader)
        self.ops.synchronize()
        start = self.clock()
        for _ in range(n):
            images, targets = next(batches)
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with self.precision.autocast():
                loss_dict = self.model(images, targets)
                loss = sum(loss_dict.values())
            self.optimizer.zero_grad()
            self.precision.backward_and_step(loss, self.optimizer)
        self.ops.synchronize()
        return self.clock() - start

    def ours(self, n: int, epoch: int) -> Any:
        start = self.clock()
        meter = self.trainer.train_epoch(epoch, n)
        self.ops.synchronize()
        return self.clock() - start, meter


class StubDetector(torch.nn.Module):
    """Detection-model interface at almost no compute: what is left is the loop's own cost."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, images: List[torch.Tensor], targets: Any) -> Dict[str, torch.Tensor]:
        return {"loss_a": self.weight.sum() * 0.5, "loss_b": self.weight.sum() * 0.25}


def harness_overhead_s(bench: Bench, iters: int = 2000, rounds: int = 5) -> Dict[str, float]:
    """Seconds per iteration of the plain and our loop around a stub model, on batches already
    in memory: the difference is what the harness adds to every real iteration."""
    device = bench.device
    batch = ([torch.zeros(3, 8, 8, device=device)], [{"boxes": torch.zeros(0, 4, device=device)}])
    loader = [batch] * iters
    model = StubDetector().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    hp: Dict[str, Any] = dict(hparams.defaults(), lr=1e-5, epochs=1)
    trainer = Trainer(
        model, optimizer, loader, None, bench.ops, bench.precision, Comm(1, device, None),
        Events(enabled=True, stream=io.StringIO()), hp, warmup_iters=0, planned_iters=iters,
        log_every=bench.args.log_every,
    )  # fmt: skip
    plain_s: List[float] = []
    ours_s: List[float] = []
    for _ in range(rounds):
        bench.ops.synchronize()
        start = time.perf_counter()
        for images, targets in loader:
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        bench.ops.synchronize()
        plain_s.append((time.perf_counter() - start) / iters)
        start = time.perf_counter()
        trainer.train_epoch(0, iters)
        ours_s.append((time.perf_counter() - start) / iters)
    return {"plain": min(plain_s), "ours": min(ours_s)}


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height = int(args.image_size.lower().split("x")[0])
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = os.path.join(tmp, "coco")
            images = (args.iters + args.warmup_iters + 4) * args.batch_size
            generate(data_dir, images, 1, size=height, seed=0)
        bench = Bench(args, data_dir)
        if len(bench.loader) < max(args.iters, args.warmup_iters):
            raise SystemExit(f"{data_dir} gives only {len(bench.loader)} batches per epoch")
        print(
            f"device {bench.device} ({bench.ops.name()}), images {bench.size}, batch "
            f"{args.batch_size}, {args.precision}, threads {torch.get_num_threads()}, workers "
            f"{args.workers}, {args.iters} iterations x {args.rounds} rounds, "
            f"{bench.clock_name} clock"
        )
        bench.plain(args.warmup_iters, 0)
        bench.ours(args.warmup_iters, 0)
        bench.ops.reset_peak_memory()
        plain_rates: List[float] = []
        our_rates: List[float] = []
        core_rates: List[float] = []
        ratios: List[float] = []
        for r in range(args.rounds):
            # alternate the order so drifting machine load does not favour one loop
            first_plain = r % 2 == 0
            if first_plain:
                plain_s = bench.plain(args.iters, r + 1)
            our_s, meter = bench.ours(args.iters, r + 1)
            if not first_plain:
                plain_s = bench.plain(args.iters, r + 1)
            plain_rates.append(args.iters / plain_s)
            our_rates.append(args.iters / our_s)
            ratios.append(our_rates[-1] / plain_rates[-1])
            core_rates.append(meter.images / meter.core_s)  # wall clock, as in the rank files
            print(f"round {r}: plain {plain_rates[-1]:.4f} it/s   ours {our_rates[-1]:.4f} it/s")
    plain, ours = statistics.median(plain_rates), statistics.median(our_rates)
    print(f"plain loop: {plain:.4f} it/s (median)")
    print(f"our loop:   {ours:.4f} it/s (median)")
    print(f"ratio ours/plain: {ours / plain:.3f} (target >= 0.97)")
    print(
        f"per-round ratios: median {statistics.median(ratios):.3f}, "
        f"range {min(ratios):.3f} .. {max(ratios):.3f}"
    )
    overhead = harness_overhead_s(bench)
    extra = overhead["ours"] - overhead["plain"]
    step = 1.0 / ours
    print(
        f"harness cost per iteration (stub model, wall clock): plain {overhead['plain'] * 1e6:.0f} us, "
        f"ours {overhead['ours'] * 1e6:.0f} us, difference {extra * 1e6:.0f} us = "
        f"{100 * extra / step:.3f} % of this run's {step * 1e3:.0f} ms step, "
        f"{100 * extra / 0.1:.3f} % of a 100 ms step"
    )
    print(f"p_core (1 process, our loop): {statistics.median(core_rates):.2f} images/s")
    memory = bench.ops.memory()
    if memory["peak_allocated_bytes"] is None:
        print("peak memory: n/a on the CPU")
    else:
        gib = 1024.0**3
        print(
            f"peak memory: allocated {memory['peak_allocated_bytes'] / gib:.2f} GiB, reserved "
            f"{(memory['peak_reserved_bytes'] or 0) / gib:.2f} GiB, "
            f"device total {(memory['total_bytes'] or 0) / gib:.2f} GiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
