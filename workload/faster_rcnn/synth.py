"""A small synthetic COCO 2017 dataset: simple shapes of distinct colours with exact boxes.

    python -m workload.faster_rcnn.synth --out DIR --images N [--val-images M] [--size 128] [--seed 0]

Writes DIR/train2017/*.jpg, DIR/val2017/*.jpg and DIR/annotations/instances_{train,val}2017.json.
Deterministic for a given seed. Every fourth image is 3:2 landscape so aspect-ratio grouping has
something to group; `--empty K` adds K training images without objects (the loader drops them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

# id, name, colour: distinct shape and colour per class so a short training run can learn them
CATEGORIES = (
    (1, "square", (220, 40, 40)),
    (2, "circle", (40, 190, 60)),
    (3, "triangle", (40, 70, 230)),
)
Box = Tuple[int, int, int, int]  # x, y, w, h


def _overlap(a: Box, b: Box) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def _shape(
    draw: ImageDraw.ImageDraw, category: int, box: Box, colour: Tuple[int, int, int]
) -> Tuple[List[float], float]:
    """Draw one object filling `box`; return its polygon and area."""
    x, y, w, h = box
    if category == 1:
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
        corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        return [float(v) for point in corners for v in point], float(w * h)
    if category == 2:
        draw.ellipse([x, y, x + w - 1, y + h - 1], fill=colour)
        outline: List[float] = []
        for k in range(16):
            angle = 2 * math.pi * k / 16
            outline += [x + w / 2 * (1 + math.cos(angle)), y + h / 2 * (1 + math.sin(angle))]
        return outline, math.pi * w * h / 4
    draw.polygon([(x, y + h - 1), (x + w - 1, y + h - 1), (x + (w - 1) / 2.0, y)], fill=colour)
    return [float(x), float(y + h), float(x + w), float(y + h), x + w / 2.0, float(y)], w * h / 2.0


def _image(
    rng: random.Random, width: int, height: int, objects: int
) -> Tuple[Image.Image, List[Dict[str, Any]]]:
    background = (rng.randint(150, 245), rng.randint(150, 245), rng.randint(150, 245))
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    placed: List[Box] = []
    anns: List[Dict[str, Any]] = []
    short = min(width, height)
    for _ in range(objects):
        for _attempt in range(30):
            side = rng.randint(int(short * 0.25), int(short * 0.55))
            w = max(4, int(side * rng.uniform(0.8, 1.25)))
            h = max(4, side)
            w, h = min(w, width - 1), min(h, height - 1)
            box = (rng.randint(0, width - w), rng.randint(0, height - h), w, h)
            if all(_overlap(box, other) == 0 for other in placed):
                break
        else:
            continue
        placed.append(box)
        category, _name, colour = CATEGORIES[rng.randrange(len(CATEGORIES))]
        jitter = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in colour)
        poly, area = _shape(draw, category, box, jitter)  # type: ignore[arg-type]
        anns.append(
            {
                "category_id": category,
                "bbox": [float(v) for v in box],
                "area": float(area),
                "segmentation": [poly],
                "iscrowd": 0,
            }
        )
    return img, anns


def write_split(
    out: str, split: str, count: int, empty: int, size: int, rng: random.Random, first_id: int
) -> Dict[str, Any]:
    image_dir = os.path.join(out, split)
    os.makedirs(image_dir, exist_ok=True)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for index in range(count + empty):
        image_id = first_id + index
        width = size * 3 // 2 if index % 4 == 3 else size
        objects = 0 if index >= count else rng.randint(1, 3)
        img, anns = _image(rng, width, size, objects)
        file_name = f"{image_id:012d}.jpg"
        img.save(os.path.join(image_dir, file_name), format="JPEG", quality=95)
        images.append(
            {"id": image_id, "file_name": file_name, "width": width, "height": size, "license": 1}
        )
        for ann in anns:
            ann.update({"id": len(annotations) + 1 + first_id * 10, "image_id": image_id})
            annotations.append(ann)
    doc = {
        "info": {"description": "orchestrator synthetic COCO", "version": "1.0", "year": 2017},
        "licenses": [{"id": 1, "name": "CC0", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": name, "supercategory": "shape"} for cid, name, _c in CATEGORIES
        ],
    }
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    path = os.path.join(out, "annotations", f"instances_{split}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, sort_keys=True)
    return doc


def generate(
    out: str, images: int, val_images: int, size: int = 128, seed: int = 0, empty: int = 0
) -> None:
    if images < 1 or val_images < 1 or size < 16 or empty < 0:
        raise ValueError("need --images >= 1, --val-images >= 1, --size >= 16, --empty >= 0")
    write_split(out, "train2017", images, empty, size, random.Random(seed), first_id=1)
    write_split(out, "val2017", val_images, 0, size, random.Random(seed + 7919), first_id=1000000)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m workload.faster_rcnn.synth", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", required=True, help="directory to write (created)")
    p.add_argument("--images", type=int, required=True, help="training images with objects")
    p.add_argument(
        "--val-images",
        type=int,
        default=None,
        help="validation images (default: images/4, at least 4)",
    )
    p.add_argument("--size", type=int, default=128, help="image height in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--empty", type=int, default=0, help="extra training images without objects")
    args = p.parse_args(argv)
    val = args.val_images if args.val_images is not None else max(4, args.images // 4)
    try:
        generate(args.out, args.images, val, args.size, args.seed, args.empty)
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stderr.write(f"wrote {args.images + args.empty} train + {val} val images to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
