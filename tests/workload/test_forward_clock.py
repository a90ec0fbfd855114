"""The forward pass's own time (workload/faster_rcnn/forward_clock.py): the wrapped module's
forward while training, nothing under no_grad (evaluation), read once per iteration."""

from __future__ import annotations

import time

import pytest
import torch

from workload.faster_rcnn.forward_clock import ForwardClock


class Slow(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return x * 2


def test_training_forwards_are_timed_and_evaluation_is_not() -> None:
    module = Slow()
    synced = []
    clock = ForwardClock(module, torch.device("cpu"), lambda: synced.append(1))
    x = torch.ones(2, requires_grad=True)
    module(x)
    module(x)
    first = clock.take()
    assert first == pytest.approx(0.1, abs=0.03)
    assert clock.take() == 0.0  # read once
    with torch.no_grad():
        module(x)
    assert clock.take() == 0.0 and clock.total_s == pytest.approx(first)
    assert synced == []  # the CPU's clock needs no synchronisation
    clock.close()
    module(x)
    assert clock.take() == 0.0  # the hooks are gone


def test_an_accelerator_without_cuda_events_is_synchronised_at_both_ends() -> None:
    synced = []
    module = Slow()
    clock = ForwardClock(module, torch.device("meta"), lambda: synced.append(1))
    module(torch.ones(2, requires_grad=True))
    assert synced == [1, 1] and clock.take() == pytest.approx(0.05, abs=0.03)
