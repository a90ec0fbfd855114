"""Datasets and loaders: COCO images to (image tensor, target) pairs, horizontal flip, and
aspect-ratio grouped batches over a DistributedSampler, as in torchvision's detection reference."""

from __future__ import annotations

import bisect
import os
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from torchvision.transforms.functional import pil_to_tensor

from .errors import DatasetError

Target = Dict[str, torch.Tensor]


class CocoDetection(Dataset):
    """COCO images and their non-crowd boxes (xyxy, clipped to the image) and labels."""

    def __init__(self, image_dir: str, coco: Any, ids: Sequence[int], flip: bool) -> None:
        self.image_dir = image_dir
        self.coco = coco
        self.ids = list(ids)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.ids)

    def _read(self, image_id: int) -> Image.Image:
        path = os.path.join(self.image_dir, self.coco.imgs[image_id]["file_name"])
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DatasetError(
                f"cannot read image {path} ({exc})",
                "replace the file or regenerate the dataset",
            ) from None

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Target]:
        image_id = self.ids[index]
        img = self._read(image_id)
        width, height = img.size
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=width)
        boxes[:, 1::2].clamp_(min=0, max=height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        image = _to_tensor(img)
        boxes, labels = boxes[keep], labels[keep]
        if self.flip and torch.rand(1).item() < 0.5:
            image = image.flip(-1)
            boxes = boxes[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0])
            boxes[:, 0::2] += width
        target = {"boxes": boxes, "labels": labels, "image_id": torch.tensor(image_id)}
        return image, target


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float CHW in [0, 1] (what transforms.ToTensor does)."""
    return pil_to_tensor(img).float().div_(255)


def collate(batch: List[Tuple[torch.Tensor, Target]]) -> Tuple[Any, ...]:
    return tuple(zip(*batch))


def aspect_ratio_groups(aspect_ratios: Sequence[float], factor: int) -> List[int]:
    """Group index per image: width/height quantised into 2*factor+2 bins (reference behaviour)."""
    if factor == 0:
        bins = [1.0]
    else:
        bins = [2 ** (-1 + i / factor) for i in range(2 * factor + 1)]
    return [bisect.bisect_right(bins, ratio) for ratio in aspect_ratios]


class GroupedBatchSampler(Sampler):
    """Batches whose images share an aspect-ratio group. Yields exactly len(sampler)//batch_size
    batches per epoch: leftovers are completed with repeated images of their group, as the
    reference does, so every rank runs the same number of iterations."""

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int) -> None:
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[List[int]]:
        buffers: Dict[int, List[int]] = defaultdict(list)
        seen: Dict[int, List[int]] = defaultdict(list)
        produced = 0
        expected = len(self)
        for index in self.sampler:
            group = self.group_ids[index]
            buffers[group].append(index)
            seen[group].append(index)
            if len(buffers[group]) == self.batch_size:
                if produced == expected:
                    return
                yield buffers[group]
                produced += 1
                buffers[group] = []
        for group in sorted(buffers, key=lambda g: -len(buffers[g])):
            if produced == expected:
                return
            batch = buffers[group]
            if not batch:
                continue
            missing = self.batch_size - len(batch)
            pool = seen[group] * (missing // len(seen[group]) + 1)
            batch.extend(pool[:missing])
            yield batch
            produced += 1

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # type: ignore[arg-type]


def train_loader(
    dataset: CocoDetection,
    batch_size: int,
    group_factor: int,
    workers: int,
    rank: int,
    world_size: int,
    seed: int,
    pin_memory: bool,
) -> Tuple[DataLoader, DistributedSampler]:
    sampler: DistributedSampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
    )
    if len(sampler) < batch_size:
        raise DatasetError(
            f"{len(dataset)} training images give each of {world_size} processes "
            f"{len(sampler)} image(s), fewer than one batch of {batch_size}",
            "use a larger dataset or a smaller --batch-size",
        )
    batch_sampler: Sampler
    if group_factor >= 0:
        ratios = [
            dataset.coco.imgs[i]["width"] / dataset.coco.imgs[i]["height"] for i in dataset.ids
        ]
        groups = aspect_ratio_groups(ratios, group_factor)
        batch_sampler = GroupedBatchSampler(sampler, groups, batch_size)
    else:
        batch_sampler = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=True)
    generator = torch.Generator()
    generator.manual_seed(seed * 1000003 + rank)
    loader = DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=generator,
    )
    return loader, sampler


def val_loader(
    dataset: CocoDetection, batch_size: int, workers: int, pin_memory: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
    )


def shard(ids: Sequence[int], rank: int, world_size: int) -> List[int]:
    """This rank's part of the evaluation images: every world_size-th, no padding, no repeats."""
    return list(ids[rank::world_size])
