"""Where the workload follows FlagPerf's way of measuring, and where it keeps the field that
recovers FlagPerf's reading: the extra epoch of FlagPerf's loop, the DataLoader start-up inside
p_train, GradScaler's skipped steps counted, the import time kept apart (docs/metrics.md)."""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import torch

from workload.faster_rcnn import hparams
from workload.faster_rcnn.comm import Comm
from workload.faster_rcnn.device import DeviceOps, Precision
from workload.faster_rcnn.progress import Events
from workload.faster_rcnn.train import Trainer


def test_every_vendor_config_set_trains_flagperfs_extra_epoch():
    for vendor, entry in hparams.VENDOR_CONFIGS.items():
        for topology in entry["topologies"]:
            hp = hparams.resolve(f"{vendor}:{topology}", topology, {}).hparams
            assert hp["flagperf_epochs"] is True
            assert hparams.epochs_to_train(hp) == 27  # FlagPerf: max_epoch 26, epochs 0..26
    reference = hparams.resolve(None, "1x1", {}).hparams
    assert reference["flagperf_epochs"] is False and hparams.epochs_to_train(reference) == 26
    # a config set's topology values still win over the rule, and --set over both
    hp = hparams.resolve("metax-c500:2x8", "2x8", {}, ["flagperf_epochs=false"]).hparams
    assert (hp["batch_size"], hp["lr"], hparams.epochs_to_train(hp)) == (16, 0.08, 26)


class _SlowStartLoader:
    """Two batches of one 8x8 image; starting the iterator takes `startup_s` (as a DataLoader
    that forks its worker processes)."""

    def __init__(self, startup_s: float) -> None:
        self.startup_s = startup_s

    def __len__(self) -> int:
        return 2

    def __iter__(self) -> Iterator[Tuple[List[torch.Tensor], List[Dict[str, torch.Tensor]]]]:
        time.sleep(self.startup_s)
        for _ in range(2):
            yield [torch.ones(3, 8, 8)], [{"labels": torch.tensor([1])}]


class _TinyDetector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, images: List[torch.Tensor], targets: Any) -> Dict[str, torch.Tensor]:
        return {"loss": self.weight * sum(im.mean() for im in images)}


def _trainer(model: torch.nn.Module, loader: Any, precision: Precision) -> Trainer:
    device = torch.device("cpu")
    hp = {"lr": 0.01, "lr_steps": [16, 22], "lr_gamma": 0.1, "warmup_factor": 0.001}
    hp.update(epochs=1, flagperf_epochs=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return Trainer(
        model, optimizer, loader, None, DeviceOps(device), precision, Comm(1, device, None),
        Events(False), hp, 0, 2, 1000,
    )  # fmt: skip


def test_the_loaders_start_up_is_training_time_and_data_time_not_core_time():
    startup = 0.3
    model = _TinyDetector()
    meter = _trainer(model, _SlowStartLoader(startup), Precision("fp32", torch.device("cpu"), 1.0))
    meter = meter.train_epoch(0)
    assert meter.iterations == 2
    assert meter.train_s >= startup  # FlagPerf's noevaltime starts before iter(loader)
    assert meter.data_s >= startup
    assert meter.core_s < startup
    assert meter.data_s + meter.core_s == pytest.approx(meter.train_s, abs=1e-6)


class _OverflowOnce(torch.nn.Module):
    """A loss whose gradient is infinite at the first step only."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, images: List[torch.Tensor], targets: Any) -> Dict[str, torch.Tensor]:
        self.calls += 1
        scale = float("inf") if self.calls == 1 else 1.0
        return {"loss": self.weight * scale}


def test_grad_scaler_skipped_steps_are_counted():
    # amp on an accelerator scales the loss with a GradScaler; the CPU build has one too.
    precision = Precision("fp32", torch.device("cpu"), 1.0)
    precision.use_scaler(torch.amp.GradScaler("cpu", init_scale=1024.0))
    model = _OverflowOnce()
    meter = _trainer(model, _SlowStartLoader(0.0), precision).train_epoch(0)
    assert meter.iterations == 2
    assert meter.skipped_steps == 1  # the step with the infinite gradient, and only that one
    assert float(model.weight.detach()) < 1.0  # the second step ran
