"""Metric arithmetic, pure Python: per-rank timers and counters, and the throughput formulas.
Definitions are written down in docs/metrics.md; keep the two in step."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence


def rate(images: int, seconds: float) -> Optional[float]:
    """images / seconds, or None when nothing was timed."""
    if seconds <= 0 or images <= 0:
        return None
    return images / seconds


def throughputs(global_images: int, times: Dict[str, float]) -> Dict[str, Optional[float]]:
    """p_whole, p_train, p_core: the global image count over train_s, train_no_eval_s, core_s.

    With one rank's own times this is FlagPerf's formula seen from that rank (what the rank file
    stores); with the slowest rank's times it is the run's throughput (what the store computes).

    p_whole = images / train_s          (training loops + per-epoch evaluation)
    p_train = images / train_no_eval_s  (training loops with data loading, no evaluation)
    p_core  = images / core_s           (forward + loss + backward + step, device-synchronised)
    """
    return {
        "p_whole": rate(global_images, times["train_s"]),
        "p_train": rate(global_images, times["train_no_eval_s"]),
        "p_core": rate(global_images, times["core_s"]),
    }


def finite_or_none(value: Optional[float]) -> Optional[float]:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


class EpochMeter:
    """Accumulates one epoch on one rank: iterations, images, data/core time, loss sum."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.iterations = 0
        self.images = 0
        self.core_s = 0.0
        self.data_s = 0.0
        self.forward_s = 0.0  # the inner model's forward, no collective (forward_clock.py)
        self.train_s = 0.0
        self.eval_s: Optional[float] = None
        self.loss_mean: Optional[float] = None
        self.lr = 0.0
        self.map: Optional[float] = None
        self.complete = True
        self.skipped_steps = 0
        self.loss_scale: Optional[float] = None  # at the epoch's end; None: the loss is not scaled

    def step(self, images: int, data_s: float, core_s: float) -> None:
        self.iterations += 1
        self.images += images
        self.data_s += data_s
        self.core_s += core_s

    def record(self) -> Dict[str, Any]:
        return {
            "epoch": self.epoch,
            "iterations": self.iterations,
            "images": self.images,
            "loss": finite_or_none(self.loss_mean),
            "lr": self.lr,
            "train_s": self.train_s,
            "core_s": self.core_s,
            "data_s": self.data_s,
            "eval_s": self.eval_s,
            "map": self.map,
            "complete": self.complete,
            "skipped_steps": self.skipped_steps,
            "loss_scale": self.loss_scale,
        }


class RunTotals:
    """Sums over the epochs of one rank."""

    def __init__(self) -> None:
        self.epochs: List[EpochMeter] = []

    def add(self, meter: EpochMeter) -> None:
        self.epochs.append(meter)

    def _sum(self, name: str) -> float:
        return float(sum(getattr(m, name) or 0.0 for m in self.epochs))

    @property
    def images(self) -> int:
        return int(sum(m.images for m in self.epochs))

    @property
    def iterations(self) -> int:
        return int(sum(m.iterations for m in self.epochs))

    @property
    def train_no_eval_s(self) -> float:
        return self._sum("train_s")

    @property
    def core_s(self) -> float:
        return self._sum("core_s")

    @property
    def forward_s(self) -> float:
        return self._sum("forward_s")

    @property
    def data_s(self) -> float:
        return self._sum("data_s")

    @property
    def eval_s(self) -> float:
        return self._sum("eval_s")

    def records(self) -> List[Dict[str, Any]]:
        return [m.record() for m in self.epochs]


def eta_seconds(done: int, total: int, elapsed_s: float) -> Optional[float]:
    """Remaining training time at the mean pace so far (evaluation not included)."""
    if done <= 0 or total <= done:
        return 0.0 if total <= done else None
    return elapsed_s / done * (total - done)


def planned_iterations(iters_per_epoch: int, epochs: int, max_iters: Optional[int]) -> int:
    total = iters_per_epoch * epochs
    return min(total, max_iters) if max_iters else total


def max_over(values: Sequence[float]) -> float:
    return max(values) if values else 0.0
