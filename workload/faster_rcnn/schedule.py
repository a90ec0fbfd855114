"""The learning-rate schedule of the reference, as one pure function.

torchvision's detection reference (which FlagPerf copies) steps a LambdaLR linear warm-up every
iteration of epoch 0 and a MultiStepLR at the end of every epoch. `lr_at` gives the same value for
each (epoch, iteration); tests compare it with those torch schedulers.
"""

from __future__ import annotations

from typing import Optional, Sequence


def resolve_warmup_iters(warmup_iters: Optional[int], iters_per_epoch: int) -> int:
    """Explicit value, or the reference's min(1000, iterations per epoch - 1)."""
    if warmup_iters is not None:
        return warmup_iters
    return max(0, min(1000, iters_per_epoch - 1))


def lr_at(
    base_lr: float,
    epoch: int,
    iteration: int,
    lr_steps: Sequence[int],
    lr_gamma: float,
    warmup_iters: int,
    warmup_factor: float,
) -> float:
    """Learning rate for 0-based `iteration` of 0-based `epoch`."""
    lr = base_lr * lr_gamma ** sum(1 for step in lr_steps if epoch >= step)
    if epoch == 0 and iteration < warmup_iters:
        alpha = iteration / warmup_iters
        lr *= warmup_factor * (1 - alpha) + alpha
    return lr
