"""fp16 training as mixed-precision recipes do it: the model computes in fp16, the optimizer steps
fp32 master weights, and a dynamic loss scale backs off (skipping the step) on overflow and grows
after a run of finite steps (half.py, docs/workload.md "Precision")."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
import torch

from workload.faster_rcnn.comm import Comm
from workload.faster_rcnn.device import DeviceOps, Precision
from workload.faster_rcnn.half import LossScale
from workload.faster_rcnn.progress import Events
from workload.faster_rcnn.train import Trainer

CPU = torch.device("cpu")


class Scalar(torch.nn.Module):
    """loss = weight * mean(image): the weight's gradient is the image's value."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(weight))
        self.frozen = torch.nn.Parameter(torch.tensor(2.0), requires_grad=False)
        self.seen: List[torch.dtype] = []

    def forward(self, images: List[torch.Tensor], targets: Any) -> Dict[str, torch.Tensor]:
        loss = self.weight * sum(im.mean() for im in images)
        self.seen.append(loss.dtype)
        return {"loss": loss}


class Batches:
    def __init__(self, value: float, n: int) -> None:
        self.value, self.n = value, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield [torch.full((3, 4, 4), self.value)], [{"labels": torch.tensor([1])}]


def fp16_setup(model: torch.nn.Module, lr: float, loss_scale: float = 1024.0):
    precision = Precision("fp16", CPU, loss_scale)
    model = precision.prepare_model(model)
    optimizer = torch.optim.SGD(precision.optimizer_params(model), lr=lr, momentum=0.9)
    return precision, model, optimizer


def train(model, optimizer, precision, batches):
    hp = {"lr": optimizer.param_groups[0]["lr"], "lr_steps": [100], "lr_gamma": 0.1}
    hp.update(warmup_factor=1.0, epochs=1, flagperf_epochs=False)
    trainer = Trainer(
        model, optimizer, batches, None, DeviceOps(CPU), precision, Comm(1, CPU, None),
        Events(False), hp, 0, len(batches), 1000,
    )  # fmt: skip
    return trainer.train_epoch(0)


def test_fp16_computes_in_fp16_and_the_optimizer_holds_fp32_masters():
    precision, model, optimizer = fp16_setup(Scalar(1.0001), lr=0.01)
    # one master: for the trainable weight, not for the frozen one
    (master,) = [p for group in optimizer.param_groups for p in group["params"]]
    assert (
        model.frozen.dtype == model.weight.dtype == torch.float16 and master.dtype == torch.float32
    )
    # the master starts from the fp32 weight, not from its fp16 rounding (1.0)
    assert float(model.weight.detach()) == 1.0
    assert float(master.detach()) == float(torch.tensor(1.0001))
    meter = train(model, optimizer, precision, Batches(1.0, 1))
    assert model.seen == [torch.float16]  # the forward ran in fp16
    assert meter.skipped_steps == 0
    assert float(master.detach()) == pytest.approx(0.9901)  # SGD on the master: 1.0001 - 0.01
    assert model.weight.dtype == torch.float16
    assert float(model.weight.detach()) == float(master.detach().half())  # the master, rounded
    assert optimizer.state[master]["momentum_buffer"].dtype == torch.float32
    assert model.weight.grad is None  # the fp16 gradients were consumed, none accumulate


def test_an_update_below_fp16_resolution_still_moves_the_master_weight():
    # fp16 holds 1.0 and 1.0 - 2**-11 as neighbours, so a step of 1e-4 rounds away in fp16
    assert float(torch.tensor(1.0).half() - torch.tensor(1e-4).half()) == 1.0
    precision, model, optimizer = fp16_setup(Scalar(), lr=1e-4)
    for group in optimizer.param_groups:
        group["momentum"] = 0.0
    (master,) = optimizer.param_groups[0]["params"]
    train(model, optimizer, precision, Batches(1.0, 1))
    assert float(model.weight.detach()) == 1.0  # not yet visible in fp16 ...
    assert float(master.detach()) == pytest.approx(1.0 - 1e-4, abs=1e-7)  # ... but kept in fp32
    train(model, optimizer, precision, Batches(1.0, 9))
    assert float(master.detach()) == pytest.approx(1.0 - 1e-3, abs=1e-6)
    assert float(model.weight.detach()) == float(torch.tensor(1.0 - 1e-3).half()) < 1.0  # it shows


def test_overflow_halves_the_loss_scale_and_the_step_is_skipped_and_counted():
    # the weight's gradient is 100 x the scale: inf in fp16 at 1024 (102400 > 65504), finite
    # at 512: the first step is skipped, the second runs
    precision, model, optimizer = fp16_setup(Scalar(), lr=0.001, loss_scale=1024.0)
    (master,) = optimizer.param_groups[0]["params"]
    meter = train(model, optimizer, precision, Batches(100.0, 1))
    assert meter.skipped_steps == 1 and meter.loss_scale == 512.0
    assert float(master.detach()) == 1.0 and float(model.weight.detach()) == 1.0  # nothing moved
    meter = train(model, optimizer, precision, Batches(100.0, 1))
    assert meter.skipped_steps == 0 and meter.loss_scale == 512.0
    assert float(master.detach()) == pytest.approx(1.0 - 0.001 * 100)
    assert meter.record()["skipped_steps"] == 0 and meter.record()["loss_scale"] == 512.0


def test_the_loss_scale_grows_after_a_run_of_finite_steps():
    scale = LossScale(8.0, interval=3)
    for finite, expected in [(True, 8), (True, 8), (True, 16), (True, 16), (False, 8)]:
        scale.update(finite)
        assert scale.scale == expected
    for _ in range(2):
        scale.update(True)
    assert scale.scale == 8  # the count restarted at the overflow
    scale.update(True)
    assert scale.scale == 16


def test_fp16_needs_its_model_prepared_before_a_step():
    precision = Precision("fp16", CPU, 1024.0)
    with pytest.raises(RuntimeError, match="prepare_model"):
        precision.backward_and_step(
            torch.ones((), requires_grad=True),
            torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
        )
