"""Dataset layout, annotation checks, the training filter, targets, flip and grouped batches."""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workload.faster_rcnn import coco, data
from workload.faster_rcnn.errors import DatasetError


def _doc(**changes):
    doc = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.jpg", "width": 64, "height": 64},
            {"id": 3, "file_name": "c.jpg", "width": 32, "height": 64},
            {"id": 4, "file_name": "d.jpg", "width": 64, "height": 64},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 5, 10, 10], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [60, 40, 10, 10], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5, 1, 30], "iscrowd": 0},
            {"id": 5, "image_id": 3, "category_id": 2, "bbox": [0, 0, 2, 2], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    doc.update(changes)
    return doc


def _write(path: Path, doc) -> str:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


def test_layout_errors_name_the_missing_path(tmp_path):
    with pytest.raises(DatasetError) as info:
        coco.find_layout(str(tmp_path / "nope"), need_val=True)
    assert str(tmp_path / "nope") in info.value.message and "synth" in info.value.remedy
    (tmp_path / "train2017").mkdir()
    (tmp_path / "annotations").mkdir()
    _write(tmp_path / "annotations" / "instances_train2017.json", _doc())
    coco.find_layout(str(tmp_path), need_val=False)  # val is not needed without evaluation
    with pytest.raises(DatasetError) as info:
        coco.find_layout(str(tmp_path), need_val=True)
    assert info.value.message == "{} is missing".format(tmp_path / "val2017")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ([], "the top level must be a JSON object"),
        (_doc(images={}), "'images' must be a list"),
        (
            _doc(images=[{"id": 1, "file_name": "a.jpg", "width": 64}]),
            "images[0].height must be int",
        ),
        (
            _doc(annotations=[{"id": 1, "image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]}]),
            "image_id 9 is not in 'images'",
        ),
        (
            _doc(annotations=[{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}]),
            "category_id 7",
        ),
        (
            _doc(annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]),
            "annotations[0].bbox must be a list of 4 numbers",
        ),
    ],
)
def test_malformed_annotation_file_is_named(tmp_path, content, fragment):
    path = _write(tmp_path / "instances_train2017.json", content)
    with pytest.raises(DatasetError) as info:
        coco.load_coco(path)
    assert info.value.message.startswith(path + ": ")
    assert fragment in info.value.message


def test_unreadable_annotation_file(tmp_path):
    with pytest.raises(DatasetError) as info:
        coco.load_coco(str(tmp_path))  # a directory
    assert str(tmp_path) in info.value.message


def test_training_filter_drops_images_without_valid_boxes(tmp_path, capsys):
    gt = coco.load_coco(_write(tmp_path / "a.json", _doc()))
    # 2: only a 1-pixel-wide box; 3: only a 2x2 box is valid (> 1 px); 4: no annotation
    assert coco.train_image_ids(gt) == [1, 3]
    assert coco.val_image_ids(gt) == [1, 2, 3, 4]
    assert coco.val_image_ids(gt, 2) == [1, 2]
    assert capsys.readouterr().out == ""  # pycocotools' chatter went to stderr


def test_targets_skip_crowd_clip_and_drop_degenerate_boxes(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / "a.jpg")
    gt = coco.load_coco(_write(tmp_path / "a.json", _doc()))
    image, target = data.CocoDetection(str(tmp_path), gt, [1], flip=False)[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32 and float(image.max()) <= 1.0
    # crowd box dropped; [60, 40, 10, 10] clipped to the 64x48 image
    assert target["boxes"].tolist() == [[4.0, 4.0, 24.0, 14.0], [60.0, 40.0, 64.0, 48.0]]
    assert target["labels"].tolist() == [1, 2]
    assert int(target["image_id"]) == 1


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    gt = coco.load_coco(_write(tmp_path / "a.json", _doc()))
    with pytest.raises(DatasetError) as info:
        data.CocoDetection(str(tmp_path), gt, [1], flip=False)[0]
    assert str(tmp_path / "a.jpg") in info.value.message


def test_horizontal_flip_moves_image_and_boxes_together(synth_coco):
    gt = coco.load_coco(str(synth_coco / "annotations" / "instances_train2017.json"))
    plain = data.CocoDetection(str(synth_coco / "train2017"), gt, [4], flip=False)  # 96x64 image
    flipping = data.CocoDetection(str(synth_coco / "train2017"), gt, [4], flip=True)
    image, target = plain[0]
    width = image.shape[-1]
    outcomes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image2, target2 = flipping[0]
        flipped = not torch.equal(image2, image)
        outcomes.add(flipped)
        if flipped:
            assert torch.equal(image2, image.flip(-1))
            expected = target["boxes"].clone()
            expected[:, 0], expected[:, 2] = (
                width - target["boxes"][:, 2],
                width - target["boxes"][:, 0],
            )
            assert torch.allclose(target2["boxes"], expected)
        else:
            assert torch.equal(target2["boxes"], target["boxes"])
    assert outcomes == {True, False}


def test_aspect_ratio_groups_match_the_reference_quantisation():
    ratios = [0.4, 0.5, 0.63, 0.8, 1.0, 1.26, 1.5, 2.0, 3.0]
    for factor in (0, 1, 3):
        bins = sorted((2 ** np.linspace(-1, 1, 2 * factor + 1)).tolist()) if factor > 0 else [1.0]
        assert data.aspect_ratio_groups(ratios, factor) == [
            bisect.bisect_right(bins, r) for r in ratios
        ]


@pytest.mark.parametrize("n, batch", [(10, 2), (11, 3), (7, 4)])
def test_grouped_batches_are_full_homogeneous_and_cover_the_sampler(n, batch):
    groups = [i % 3 for i in range(n)]
    sampler = list(range(n))
    batches = list(data.GroupedBatchSampler(sampler, groups, batch))
    assert len(batches) == n // batch == len(data.GroupedBatchSampler(sampler, groups, batch))
    for b in batches:
        assert len(b) == batch and len({groups[i] for i in b}) == 1
    used = {i for b in batches for i in b}
    assert used <= set(sampler)


def test_ranks_get_equal_iterations_and_disjoint_shards(synth_coco):
    gt = coco.load_coco(str(synth_coco / "annotations" / "instances_train2017.json"))
    dataset = data.CocoDetection(
        str(synth_coco / "train2017"), gt, coco.train_image_ids(gt), flip=True
    )
    loaders = [data.train_loader(dataset, 2, 3, 0, rank, 2, 0, False)[0] for rank in range(2)]
    assert len(loaders[0]) == len(loaders[1]) == 4
    shards = [data.shard(list(range(10)), r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))


def test_too_small_dataset_for_the_batch(synth_coco):
    gt = coco.load_coco(str(synth_coco / "annotations" / "instances_train2017.json"))
    ids = coco.train_image_ids(gt)[:3]  # 2 ranks: the sampler pads to 2 images each
    dataset = data.CocoDetection(str(synth_coco / "train2017"), gt, ids, flip=True)
    assert len(data.train_loader(dataset, 2, 3, 0, 0, 2, 0, False)[0]) == 1
    with pytest.raises(DatasetError) as info:
        data.train_loader(dataset, 3, 3, 0, 0, 2, 0, False)
    assert "give each of 2 processes 2 image(s), fewer than one batch of 3" in info.value.message
