"""The few collectives the harness needs, no-ops in a single process."""

from __future__ import annotations

from typing import Any, List, Sequence

import torch
import torch.distributed as dist


class Comm:
    def __init__(self, world_size: int, device: torch.device, backend: Any) -> None:
        self.active = world_size > 1
        self.world_size = world_size
        # gloo reduces CPU tensors; nccl and vendor backends reduce device tensors
        on_cpu = backend == "gloo" or device.type == "cpu"
        self.device = torch.device("cpu") if on_cpu else device

    def _reduce(self, values: Sequence[float], op: Any) -> List[float]:
        if not self.active:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op)
        return [float(v) for v in tensor.cpu().tolist()]

    def sum(self, values: Sequence[float]) -> List[float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: Sequence[float]) -> List[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
