"""The training loop: one epoch of forward, loss, backward and step, with the timing the metrics
need and nothing more (the harness must cost under 3 % against a plain loop, bench/)."""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from .comm import Comm
from .device import DeviceOps, Precision
from .errors import TrainingDiverged
from .forward_clock import ForwardClock
from .hparams import epochs_to_train
from .metrics import EpochMeter, eta_seconds
from .progress import Events
from .schedule import lr_at


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Any,
        sampler: Any,
        ops: DeviceOps,
        precision: Precision,
        comm: Comm,
        events: Events,
        hparams: Dict[str, Any],
        warmup_iters: int,
        planned_iters: int,
        log_every: int,
        progress_every_s: float = 5.0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loader = loader
        self.sampler = sampler
        self.ops = ops
        self.device = ops.device
        self.precision = precision
        self.comm = comm
        self.events = events
        self.hp = hparams
        self.epochs = epochs_to_train(hparams)
        self.warmup_iters = warmup_iters
        self.planned_iters = planned_iters
        self.log_every = log_every
        self.progress_every_s = progress_every_s  # a progress event at least this often
        self.done_iters = 0
        self.train_time_s = 0.0  # training loops so far, for the ETA
        # the module DDP wraps: its hooks fire after DDP's buffer broadcast
        inner = model.module if isinstance(model, DistributedDataParallel) else model
        self.forward = ForwardClock(inner, ops.device, ops.synchronize)

    def _to_device(self, images: Any, targets: Any) -> Any:
        images = self.precision.prepare_images(
            [im.to(self.device, non_blocking=True) for im in images]
        )
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        return images, targets

    def _set_lr(self, epoch: int, iteration: int) -> float:
        hp = self.hp
        lr = lr_at(
            hp["lr"],
            epoch,
            iteration,
            hp["lr_steps"],
            hp["lr_gamma"],
            self.warmup_iters,
            hp["warmup_factor"],
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_epoch(self, epoch: int, limit: Optional[int] = None) -> EpochMeter:
        """Train `epoch` for len(loader) iterations, or `limit` if fewer; return its meter."""
        meter = EpochMeter(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.model.train()
        n_iters = len(self.loader) if limit is None else min(len(self.loader), limit)
        meter.complete = n_iters == len(self.loader)
        sync = self.ops.synchronize
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        last_log_images, lr = 0, 0.0
        sync()
        t_epoch = t_prev = t_log = time.perf_counter()
        # As FlagPerf's p_train: the loader's start-up (its worker processes) is training time,
        # and data time of the first iteration.
        batches = iter(self.loader)
        for i in range(n_iters):
            images, targets = next(batches)
            images, targets = self._to_device(images, targets)
            lr = self._set_lr(epoch, i)
            sync()  # core time starts with the batch on the device
            t_core = time.perf_counter()
            with self.precision.autocast():
                loss_dict = self.model(images, targets)
                loss = sum(loss_dict.values())
            self.optimizer.zero_grad(set_to_none=True)
            if not self.precision.backward_and_step(loss, self.optimizer):
                meter.skipped_steps += 1
            sync()  # ... and ends when the step has run on the device
            t_end = time.perf_counter()
            meter.step(len(images), t_core - t_prev, t_end - t_core)
            meter.forward_s += self.forward.take()
            loss_sum += loss.detach()
            t_prev = t_end
            # The divergence check runs at the same iterations on every rank; the timed
            # events (rank 0's clock) only add progress lines.
            at_log = (i + 1) % self.log_every == 0 or i + 1 == n_iters
            timed = self.events.enabled and t_end - t_log >= self.progress_every_s
            if at_log or timed:
                value = float(loss.item())
                if at_log and not math.isfinite(value):
                    raise TrainingDiverged(
                        f"loss is {value} at epoch {epoch} iteration {i + 1}",
                        "lower the learning rate (--lr, or a longer --set warmup_iters=N) "
                        "or use --precision fp32",
                    )
                self._progress(
                    meter, epoch, i + 1, n_iters, value, lr, t_log, last_log_images, t_end - t_epoch
                )
                t_log, last_log_images = t_end, meter.images
        meter.train_s = t_prev - t_epoch
        meter.lr = lr
        meter.loss_scale = self.precision.current_scale()
        self.train_time_s += meter.train_s
        self.done_iters += meter.iterations
        total_loss, total_iters = self.comm.sum([float(loss_sum.item()), float(meter.iterations)])
        meter.loss_mean = total_loss / total_iters if total_iters else None
        return meter

    def _progress(
        self,
        meter: EpochMeter,
        epoch: int,
        iteration: int,
        n_iters: int,
        loss: float,
        lr: float,
        t_log: float,
        last_log_images: int,
        epoch_elapsed_s: float,
    ) -> None:
        now = time.perf_counter()
        done = self.done_iters + iteration
        window = now - t_log
        images = (meter.images - last_log_images) * self.comm.world_size
        epoch_left = n_iters - iteration
        self.events.progress(
            epoch=epoch,
            epochs=self.epochs,
            iteration=iteration,
            iterations=n_iters,
            step=done,
            steps=self.planned_iters,
            loss=loss,
            lr=lr,
            images_per_s=images / window if window > 0 else None,
            eta_s=eta_seconds(done, self.planned_iters, self.train_time_s + epoch_elapsed_s),
            epoch_eta_s=epoch_elapsed_s / iteration * epoch_left if iteration > 0 else None,
        )
