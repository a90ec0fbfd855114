"""The forward pass's own time on this rank, without waiting for the other ranks.

In data-parallel training every rank waits for the slowest one inside the collectives (DDP's
buffer broadcast before the forward, its gradient all-reduce during the backward), so each
rank's iteration time is the same and the fast ranks' core_s holds their waiting. The inner
model's forward (hooks on the module DDP wraps: they fire after the broadcast) has no
collective, so its time is the rank's own: the straggler scores compare it (docs/metrics.md,
"Straggler score"). On a device with events the two ends are device events, read after the
iteration's existing synchronisation: no extra sync on the hot path. Other accelerators (no
torch.cuda events) are synchronised at both ends, as every device clock of the workload is.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Optional

import torch


class ForwardClock:
    """Sums the inner module's forward time; `take()` after the iteration's device sync."""

    def __init__(
        self, module: torch.nn.Module, device: torch.device, synchronize: Callable[[], None]
    ) -> None:
        self.total_s = 0.0
        self._events = device.type == "cuda"
        # the host clock times the device's work only once it is synchronised
        self._sync = synchronize if device.type not in ("cuda", "cpu") else None
        self._started: Optional[Any] = None
        self._pending: List[Any] = []  # (start, end) pairs not yet read
        self._handles = [
            module.register_forward_pre_hook(self._start),
            module.register_forward_hook(self._end),
        ]

    def _mark(self) -> Any:
        if self._events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        if self._sync is not None:
            self._sync()
        return time.perf_counter()

    def _start(self, _module: Any, _inputs: Any) -> None:
        self._started = self._mark()

    def _end(self, _module: Any, _inputs: Any, _output: Any) -> None:
        if self._started is not None and torch.is_grad_enabled():  # training, not evaluation
            self._pending.append((self._started, self._mark()))
        self._started = None

    def take(self) -> float:
        """Seconds of the forward passes since the last call (the device is synchronised)."""
        seconds = 0.0
        for start, end in self._pending:
            seconds += start.elapsed_time(end) / 1000.0 if self._events else end - start
        self._pending = []
        self.total_s += seconds
        return seconds

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
