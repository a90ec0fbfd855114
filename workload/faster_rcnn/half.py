"""What half precision needs to stay numerically right (docs/workload.md, "Precision").

- Detection post-processing in fp32. torchvision decodes boxes in the dtype of the network's
  outputs and `batched_nms` separates the classes by adding `label * (max_coordinate + 1)` to the
  boxes, in that dtype too. In fp16 that offset overflows to inf from about category 50 (the
  boxes are then never suppressed) and rounds boxes to 8-32 px from category 6; autocast does not
  help, because the box predictor's Linear already returns fp16 (bfloat16 on the CPU).
- fp16 training with fp32 master weights and a dynamic loss scale, as mixed-precision recipes
  do: the model computes in fp16, the optimizer steps fp32 copies of its weights.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn

# torch.amp.GradScaler's defaults, so fp16 and amp follow the same rule
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000


def fp32_postprocess(model: Any) -> Any:
    """Make a torchvision FasterRCNN run its RPN's proposal NMS and its RoI heads' box decoding,
    score softmax and NMS in fp32, whatever dtype its layers compute in. Proposals go back to the
    network's dtype (exactly: they are its own values, clipped to whole image sizes)."""
    if getattr(model, "fp32_postprocess", False):
        return model
    rpn_filter = model.rpn.filter_proposals
    roi_postprocess = model.roi_heads.postprocess_detections

    def filter_proposals(
        proposals: torch.Tensor, objectness: torch.Tensor, image_shapes: Any, per_level: Any
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        with _no_autocast(proposals):
            boxes, scores = rpn_filter(
                proposals.float(), objectness.float(), image_shapes, per_level
            )
        return [b.to(proposals.dtype) for b in boxes], scores

    def postprocess_detections(
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: List[torch.Tensor],
        image_shapes: Any,
    ) -> Any:
        with _no_autocast(class_logits):
            return roi_postprocess(
                class_logits.float(),
                box_regression.float(),
                [p.float() for p in proposals],
                image_shapes,
            )

    model.rpn.filter_proposals = filter_proposals
    model.roi_heads.postprocess_detections = postprocess_detections
    model.fp32_postprocess = True
    return model


def _no_autocast(like: torch.Tensor) -> Any:
    return torch.autocast(device_type=like.device.type, enabled=False)


class LossScale:
    """The dynamic loss scale of mixed-precision training, with torch's GradScaler rule: a step
    whose gradients hold an inf or NaN is skipped and the scale multiplied by `backoff`; after
    `interval` finite steps in a row it is multiplied by `growth`."""

    def __init__(
        self,
        init: float,
        growth: float = GROWTH_FACTOR,
        backoff: float = BACKOFF_FACTOR,
        interval: int = GROWTH_INTERVAL,
    ) -> None:
        self.scale = float(init)
        self.growth = growth
        self.backoff = backoff
        self.interval = interval
        self.good_steps = 0  # finite steps since the last change

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale *= self.backoff
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.interval:
            self.scale *= self.growth
            self.good_steps = 0


class MasterWeights:
    """fp32 copies of a half model's trainable parameters. The optimizer holds and steps the
    copies (so momentum and weight decay are fp32 too); after each step the model's fp16 weights
    are set to the copies rounded to fp16. An update below fp16's resolution still accumulates in
    the fp32 copy until it shows."""

    def __init__(
        self, params: Sequence[nn.Parameter], initial: Optional[Sequence[torch.Tensor]] = None
    ) -> None:
        """`params`: the half model's trainable parameters; `initial`: their values before the
        model was halved (the masters start from those, not from their fp16 rounding)."""
        self.model_params = list(params)
        start = self.model_params if initial is None else list(initial)
        self.masters = [nn.Parameter(t.detach().float().clone()) for t in start]

    def step(self, optimizer: torch.optim.Optimizer, scale: LossScale) -> bool:
        """The model's gradients (of the loss times `scale`) to the copies, unscaled; a step
        when they are all finite; the scale updated. False: the step was skipped."""
        for param, master in zip(self.model_params, self.masters):
            master.grad = None if param.grad is None else param.grad.float()
            param.grad = None  # the model's fp16 gradients are consumed: nothing accumulates
        grads = [m.grad for m in self.masters if m.grad is not None]
        finite = True
        if grads:
            torch._foreach_mul_(grads, 1.0 / scale.scale)
            finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        scale.update(finite)
        if finite:
            optimizer.step()
            with torch.no_grad():
                for param, master in zip(self.model_params, self.masters):
                    param.copy_(master)
        return finite
