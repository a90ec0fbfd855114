"""Evaluation correctness: perfect detections score 1.0, and our evaluator agrees with a direct
pycocotools COCOeval on the same detections."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from workload.faster_rcnn import coco
from workload.faster_rcnn.device import Precision
from workload.faster_rcnn.evaluate import coco_map, predict, to_detection_rows


@pytest.fixture(scope="module")
def val_gt(synth_coco):
    return coco.load_coco(str(synth_coco / "annotations" / "instances_val2017.json"))


def ground_truth_rows(gt, image_ids):
    rows = []
    for image_id in image_ids:
        for ann in gt.imgToAnns[image_id]:
            rows.append([image_id, *ann["bbox"], 1.0, ann["category_id"]])
    return np.array(rows, dtype=np.float64)


def test_ground_truth_as_detections_gives_map_one(val_gt):
    ids = sorted(val_gt.imgs)
    result = coco_map(val_gt, ground_truth_rows(val_gt, ids), ids)
    assert result == {
        "map": pytest.approx(1.0),
        "map50": pytest.approx(1.0),
        "map75": pytest.approx(1.0),
    }


def test_our_evaluator_agrees_with_direct_cocoeval(synth_coco, val_gt):
    ids = sorted(val_gt.imgs)
    rng = np.random.default_rng(0)
    rows = ground_truth_rows(val_gt, ids)
    rows[:, 1:5] += rng.normal(0, 3.0, size=(len(rows), 4))  # imperfect boxes
    rows[:, 3:5] = np.maximum(rows[:, 3:5], 1.0)
    rows[:, 5] = rng.uniform(0.1, 1.0, size=len(rows))
    rows[::4, 6] = rows[::4, 6] % 3 + 1  # some wrong classes
    ours = coco_map(val_gt, rows, ids)

    with contextlib.redirect_stdout(io.StringIO()):
        direct_gt = COCO(str(synth_coco / "annotations" / "instances_val2017.json"))
        results = [
            {
                "image_id": int(r[0]),
                "bbox": [float(v) for v in r[1:5]],
                "score": float(r[5]),
                "category_id": int(r[6]),
            }
            for r in rows
        ]
        evaluator = COCOeval(direct_gt, direct_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert 0.05 < ours["map"] < 0.95
    assert ours["map"] == pytest.approx(evaluator.stats[0], abs=1e-12)
    assert ours["map50"] == pytest.approx(evaluator.stats[1], abs=1e-12)
    assert ours["map75"] == pytest.approx(evaluator.stats[2], abs=1e-12)


def test_image_subset_is_scored_on_its_own_images(val_gt):
    ids = sorted(val_gt.imgs)
    half = ids[: len(ids) // 2]
    # perfect on the first half only; scoring only that half gives 1.0, the whole set less
    rows = ground_truth_rows(val_gt, half)
    assert coco_map(val_gt, rows, half)["map"] == pytest.approx(1.0)
    assert coco_map(val_gt, rows, ids)["map"] < 0.9


def test_no_detections_score_zero(val_gt):
    assert coco_map(val_gt, np.zeros((0, 7)), sorted(val_gt.imgs)) == {
        "map": 0.0,
        "map50": 0.0,
        "map75": 0.0,
    }


def test_model_output_rows_are_coco_xywh():
    output = {
        "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]),
        "scores": torch.tensor([0.75]),
        "labels": torch.tensor([3]),
    }
    assert to_detection_rows(7, output).tolist() == [[7.0, 10.0, 20.0, 20.0, 40.0, 0.75, 3.0]]


def test_predict_runs_the_model_in_eval_mode_and_restores_training():
    seen = []

    class Echo(torch.nn.Module):
        def forward(self, images):
            seen.append(self.training)
            return [
                {
                    "boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]),
                    "scores": torch.tensor([0.5]),
                    "labels": torch.tensor([1]),
                }
                for _ in images
            ]

    model = Echo().train()
    loader = [
        ([torch.zeros(3, 4, 4)] * 2, [{"image_id": torch.tensor(5)}, {"image_id": torch.tensor(6)}])
    ]
    rows = predict(model, loader, torch.device("cpu"), Precision("fp32", torch.device("cpu"), 1.0))
    assert seen == [False] and model.training
    assert rows[:, 0].tolist() == [5.0, 6.0]
