"""COCO 2017 layout: finding the files, loading and checking annotation files. No torch here.

pycocotools prints progress on stdout; stdout carries our JSON events, so it is redirected to
stderr around every pycocotools call.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Dict, Iterator, List, NamedTuple

from .errors import DatasetError

_REMEDY = (
    "point --data-dir at a COCO 2017 layout (train2017/, val2017/, "
    "annotations/instances_{train,val}2017.json); "
    "`python -m workload.faster_rcnn.synth --out DIR` writes a small one"
)


class Layout(NamedTuple):
    train_images: str
    val_images: str
    train_annotations: str
    val_annotations: str


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    with contextlib.redirect_stdout(sys.stderr):
        yield


def find_layout(data_dir: str, need_val: bool) -> Layout:
    layout = Layout(
        train_images=os.path.join(data_dir, "train2017"),
        val_images=os.path.join(data_dir, "val2017"),
        train_annotations=os.path.join(data_dir, "annotations", "instances_train2017.json"),
        val_annotations=os.path.join(data_dir, "annotations", "instances_val2017.json"),
    )
    if not os.path.isdir(data_dir):
        raise DatasetError(f"dataset directory {data_dir} does not exist", _REMEDY)
    needed = [layout.train_images, layout.train_annotations]
    if need_val:
        needed += [layout.val_images, layout.val_annotations]
    for path in needed:
        if not os.path.exists(path):
            raise DatasetError(f"{path} is missing", _REMEDY)
    return layout


def _fail(path: str, what: str) -> DatasetError:
    return DatasetError(
        f"{path}: {what}", "fix or regenerate the annotation file (COCO 2017 format)"
    )


def _check_number_list(path: str, where: str, value: Any, length: int) -> None:
    if not isinstance(value, list) or len(value) != length:
        raise _fail(path, f"{where} must be a list of {length} numbers")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise _fail(path, f"{where} must be a list of {length} numbers")


def check_annotations(doc: Any, path: str) -> Dict[str, Any]:
    """Check the parts of the COCO format this workload reads; errors name the file and entry."""
    if not isinstance(doc, dict):
        raise _fail(path, "the top level must be a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise _fail(path, f"'{key}' must be a list")
    image_ids = set()
    for i, image in enumerate(doc["images"]):
        where = f"images[{i}]"
        if not isinstance(image, dict):
            raise _fail(path, where + " must be an object")
        for key, kind in (("id", int), ("file_name", str), ("width", int), ("height", int)):
            if not isinstance(image.get(key), kind) or isinstance(image.get(key), bool):
                raise _fail(path, f"{where}.{key} must be {kind.__name__}")
        if image["width"] < 1 or image["height"] < 1:
            raise _fail(path, where + " has a non-positive width or height")
        image_ids.add(image["id"])
    category_ids = set()
    for i, category in enumerate(doc["categories"]):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            raise _fail(path, f"categories[{i}].id must be int")
        category_ids.add(category["id"])
    for i, ann in enumerate(doc["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise _fail(path, where + " must be an object")
        if ann.get("image_id") not in image_ids:
            raise _fail(
                path, "{}.image_id {!r} is not in 'images'".format(where, ann.get("image_id"))
            )
        if ann.get("category_id") not in category_ids:
            raise _fail(
                path,
                "{}.category_id {!r} is not in 'categories'".format(where, ann.get("category_id")),
            )
        _check_number_list(path, where + ".bbox", ann.get("bbox"), 4)
        if "id" not in ann:
            raise _fail(path, where + ".id is missing")
    return doc


def load_coco(path: str) -> Any:
    """A pycocotools COCO object for `path`, after checking the file."""
    from pycocotools.coco import COCO

    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})", _REMEDY) from None
    except ValueError as exc:
        raise _fail(path, f"not valid JSON ({exc})") from None
    check_annotations(doc, path)
    coco = COCO()
    coco.dataset = doc
    with quiet_stdout():
        coco.createIndex()
    return coco


def has_valid_annotation(anns: List[Dict[str, Any]]) -> bool:
    """The reference's filter: at least one box wider and taller than one pixel."""
    return any(ann["bbox"][2] > 1 and ann["bbox"][3] > 1 for ann in anns)


def train_image_ids(coco: Any) -> List[int]:
    """Training images, without those lacking a valid annotation (as the reference drops them)."""
    return [i for i in sorted(coco.imgs) if has_valid_annotation(coco.imgToAnns.get(i, []))]


def val_image_ids(coco: Any, max_images: Any = None) -> List[int]:
    """Evaluation images: all of val2017 in id order, or its first `max_images`."""
    ids = sorted(coco.imgs)
    return ids[:max_images] if max_images else ids
