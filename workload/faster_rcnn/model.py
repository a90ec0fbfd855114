"""torchvision's fasterrcnn_resnet50_fpn, assembled so that the ImageNet ResNet-50 backbone comes
from a local file and nothing is ever downloaded.

It mirrors what `fasterrcnn_resnet50_fpn(weights_backbone=...)` builds: with backbone weights,
FrozenBatchNorm2d and 3 trainable backbone layers; from scratch, BatchNorm2d and all 5 layers.
Only public torchvision API that exists from 0.15 on is used.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.misc import FrozenBatchNorm2d

from .errors import WeightsError
from .half import fp32_postprocess

_WEIGHTS_REMEDY = (
    "give the torchvision ImageNet ResNet-50 checkpoint (resnet50-0676ba61.pth) "
    "or --backbone-weights none to train from scratch"
)
_LAYERS = ["layer4", "layer3", "layer2", "layer1", "conv1"]


def read_backbone_weights(path: str) -> Dict[str, torch.Tensor]:
    """A ResNet-50 state dict from `path` (plain, or under 'state_dict' / 'model')."""
    if not os.path.isfile(path):
        raise WeightsError(f"backbone weights file {path} does not exist", _WEIGHTS_REMEDY)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean: not a usable checkpoint
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint ({type(exc).__name__})", _WEIGHTS_REMEDY
        ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors", _WEIGHTS_REMEDY)
    return state


def load_backbone_weights(body: nn.Module, path: str) -> None:
    state = read_backbone_weights(path)
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    expected = body.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - {"fc.weight", "fc.bias"})
    # BatchNorm's counters are not part of FrozenBatchNorm2d
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(
            f"{path} is not a ResNet-50 checkpoint ({len(missing)} missing keys e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected e.g. {unexpected[:2]})",
            _WEIGHTS_REMEDY,
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise WeightsError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, "
                f"ResNet-50 needs {tuple(tensor.shape)}",
                _WEIGHTS_REMEDY,
            )
    body.load_state_dict(state, strict=False)


def build_model(
    backbone_weights: Optional[str],
    num_classes: int,
    trainable_layers: Optional[int],
    min_size: int,
    max_size: int,
    box_batch_size_per_image: int = 512,
) -> Tuple[FasterRCNN, int]:
    """The detector and the number of trainable backbone layers actually used. Its detection
    post-processing runs in fp32 under every precision (half.fp32_postprocess)."""
    pretrained = backbone_weights is not None
    body = resnet50(norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d)
    if backbone_weights is not None:
        load_backbone_weights(body, backbone_weights)
    layers = (3 if trainable_layers is None else trainable_layers) if pretrained else 5
    trainable = _LAYERS[:layers] + (["bn1"] if layers == 5 else [])
    for name, param in body.named_parameters():
        if not any(name.startswith(prefix) for prefix in trainable):
            param.requires_grad_(False)
    return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    backbone = BackboneWithFPN(body, return_layers, [256, 512, 1024, 2048], 256)
    model = FasterRCNN(
        backbone,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        box_batch_size_per_image=box_batch_size_per_image,
    )
    return fp32_postprocess(model), layers


def count_parameters(model: nn.Module) -> Dict[str, Any]:
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
