"""Distributed COCO evaluation: every rank runs inference on its shard of val2017, detections are
gathered to rank 0, pycocotools COCOeval computes box AP, and the numbers are broadcast back."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .coco import quiet_stdout
from .device import Precision

METRIC_NAMES = ("map", "map50", "map75")


def to_detection_rows(image_id: int, output: Dict[str, torch.Tensor]) -> np.ndarray:
    """One image's model output as COCO result rows [image_id, x, y, w, h, score, category]."""
    boxes = output["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
    rows = np.zeros((boxes.shape[0], 7), dtype=np.float64)
    rows[:, 0] = image_id
    rows[:, 1:3] = boxes[:, :2]
    rows[:, 3:5] = boxes[:, 2:] - boxes[:, :2]
    rows[:, 5] = output["scores"].detach().float().cpu().numpy()
    rows[:, 6] = output["labels"].detach().cpu().numpy()
    return rows


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    loader: Iterable[Any],
    device: torch.device,
    precision: Precision,
    on_images: Optional[Callable[[int, bool], None]] = None,
) -> np.ndarray:
    """Detections of `model` (not DDP-wrapped) on every image of `loader`; `on_images(done,
    finished)` hears how many images are done after each batch, and at the end (progress)."""
    was_training = model.training
    model.eval()
    rows: List[np.ndarray] = [np.zeros((0, 7))]
    try:
        for images, targets in loader:
            images = precision.prepare_images([im.to(device, non_blocking=True) for im in images])
            with precision.autocast():
                outputs = model(images)
            for target, output in zip(targets, outputs):
                rows.append(to_detection_rows(int(target["image_id"]), output))
            if on_images is not None:
                on_images(len(rows) - 1, False)
    finally:
        model.train(was_training)
    if on_images is not None:
        on_images(len(rows) - 1, True)
    return np.concatenate(rows)


def coco_map(coco_gt: Any, detections: np.ndarray, image_ids: Sequence[int]) -> Dict[str, float]:
    """Box AP@[.50:.95], AP50 and AP75 (all areas, maxDets 100) over `image_ids`.

    No detection at all scores 0.0 (pycocotools cannot load an empty result set).
    """
    from pycocotools.cocoeval import COCOeval

    if detections.shape[0] == 0:
        return {name: 0.0 for name in METRIC_NAMES}
    with quiet_stdout():
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    # -1 means "no ground truth in this area range": there is nothing to score, report 0
    return {name: max(0.0, float(stats[i])) for i, name in enumerate(METRIC_NAMES)}


def gather_to_rank0(rows: np.ndarray, world_size: int) -> Optional[List[np.ndarray]]:
    if world_size == 1:
        return [rows]
    gathered: Optional[List[Any]] = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object(rows, gathered, dst=0)
    return gathered


def broadcast_from_rank0(values: Optional[Dict[str, float]], world_size: int) -> Dict[str, float]:
    if world_size == 1:
        assert values is not None
        return values
    box: List[Any] = [values]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def evaluate(
    model: torch.nn.Module,
    loader: Iterable[Any],
    coco_gt: Any,
    image_ids: Sequence[int],
    device: torch.device,
    precision: Precision,
    world_size: int,
    on_images: Optional[Callable[[int, bool], None]] = None,
) -> Dict[str, float]:
    """Every rank: its shard's detections; rank 0: COCOeval over all `image_ids`; all: the result."""
    rows = predict(model, loader, device, precision, on_images)
    gathered = gather_to_rank0(rows, world_size)
    result = None
    if gathered is not None:
        result = coco_map(coco_gt, np.concatenate(gathered), image_ids)
    return broadcast_from_rank0(result, world_size)
