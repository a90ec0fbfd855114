"""Short training on synthetic COCO learns: box mAP of the untrained model against the mAP after
each epoch of a real `python -m workload.faster_rcnn` run (from scratch, one CPU process).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/demo_synth_map.py [--epochs 8]

About 10 minutes on a 2-core machine. Exit status 0 when the trained mAP is at least 0.1 above the
untrained one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from workload.faster_rcnn import coco, result_format  # noqa: E402
from workload.faster_rcnn.synth import generate  # noqa: E402


def untrained_map(data_dir: str, size: int, seed: int, box_batch: int) -> float:
    """The model exactly as the workload initialises it (same seed), evaluated before training."""
    import torch

    from workload.faster_rcnn.data import CocoDetection, val_loader
    from workload.faster_rcnn.device import Precision
    from workload.faster_rcnn.evaluate import coco_map, predict
    from workload.faster_rcnn.model import build_model

    layout = coco.find_layout(data_dir, need_val=True)
    gt = coco.load_coco(layout.val_annotations)
    ids = coco.val_image_ids(gt)
    torch.manual_seed(seed)
    model, _ = build_model(None, 91, None, size, size, box_batch)
    cpu = torch.device("cpu")
    loader = val_loader(CocoDetection(layout.val_images, gt, ids, flip=False), 1, 0, False)
    rows = predict(model, loader, cpu, Precision("fp32", cpu, 1.0))
    return coco_map(gt, rows, ids)["map"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--val-images", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.0025)
    p.add_argument("--box-batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "coco")
        generate(data_dir, args.images, args.val_images, size=args.size, seed=1)
        before = untrained_map(data_dir, args.size, args.seed, args.box_batch_size)
        print(f"untrained model: box mAP {before:.3f}", flush=True)
        out = os.path.join(tmp, "out")
        cmd = [
            sys.executable, "-m", "workload.faster_rcnn",
            "--data-dir", data_dir, "--output-dir", out, "--backbone-weights", "none",
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--target-map", "none", "--seed", str(args.seed),
            "--min-size", str(args.size), "--max-size", str(args.size), "--workers", "0",
            "--log-every", "1000", "--set", f"box_batch_size_per_image={args.box_batch_size}",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=REPO)
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith('{"event"'):
                    event = json.loads(line)
                    if event["event"] == "eval":
                        print(f"epoch {event['epoch']}: box mAP {event['map']:.3f}", flush=True)
        doc = result_format.load(os.path.join(out, result_format.file_name(0)))
    if doc["status"] != "ok":
        print(f"training failed: {doc['error']['message']}")
        return 1
    after = doc["eval"]["map"]
    print(f"after {doc['samples']['rank_iterations']} iterations: box mAP {after:.3f} "
          f"(untrained {before:.3f}); e2e {doc['timings']['e2e_s']:.0f} s")  # fmt: skip
    return 0 if after >= before + 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
