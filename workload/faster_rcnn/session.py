"""One rank's benchmark run with torch: set up, train with per-epoch evaluation, aggregate.
Fills the RankReport as it goes so that a failure keeps everything measured so far."""

from __future__ import annotations

import argparse
import random
import time
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import coco, data, evaluate
from .comm import Comm
from .device import DeviceOps, Precision, choose_backend, choose_device
from .dist_env import DistEnv
from .hparams import Resolved, epochs_to_train
from .metrics import EpochMeter, RunTotals, planned_iterations, throughputs
from .model import build_model
from .progress import Events, log
from .report import RankReport
from .schedule import resolve_warmup_iters
from .train import Trainer

_TIMES = ("train_s", "train_no_eval_s", "core_s")


def init_distributed(env: DistEnv, backend: Optional[str], timeout_s: float) -> None:
    if env.distributed and not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Session:
    def __init__(
        self,
        args: argparse.Namespace,
        env: DistEnv,
        resolved: Resolved,
        layout: coco.Layout,
        backbone_weights: Optional[str],
        report: RankReport,
        events: Events,
    ) -> None:
        self.args = args
        self.env = env
        self.hp: Dict[str, Any] = resolved.hparams
        self.layout = layout
        self.backbone_weights = backbone_weights
        self.report = report
        self.events = events
        self.val_loader: Any = None
        self.val_ids: List[int] = []
        self.coco_val: Any = None

    def run(self, coco_train: Any, coco_val: Any) -> None:
        """Train and evaluate; `coco_val` is None when evaluation is off."""
        self._setup_device()
        torch.manual_seed(self.hp["seed"])
        random.seed(self.hp["seed"])
        train_images = self._build_data(coco_train, coco_val)
        self._build_model()
        iters_per_epoch = len(self.loader)
        self.epochs = epochs_to_train(self.hp)  # one more under FlagPerf's loop rule
        planned = planned_iterations(iters_per_epoch, self.epochs, self.hp["max_iters"])
        warmup = resolve_warmup_iters(self.hp["warmup_iters"], iters_per_epoch)
        self.report.extra["plan"] = {
            "iterations_per_epoch": iters_per_epoch,
            "planned_iterations": planned,
            "warmup_iters": warmup,
            "train_images": train_images,  # the training set, images without objects dropped
            "eval_images": len(self.val_ids),
        }
        trainer = Trainer(
            self.net, self.optimizer, self.loader, self.sampler, self.ops, self.precision,
            self.comm, self.events, self.hp, warmup, planned, self.args.log_every,
            self.args.progress_every_s,
        )  # fmt: skip
        self.events.emit(
            "start",
            run_id=self.report.run_id,
            world_size=self.env.world_size,
            nnodes=self.env.nnodes,
            device=str(self.device),
            backend=self.backend,
            precision=self.hp["precision"],
            batch_size=self.hp["batch_size"],
            epochs=self.epochs,
            iterations_per_epoch=iters_per_epoch,
            steps=planned,
            train_images=train_images,
            val_images=len(self.val_ids),
            config_name=self.report.config["config_name"],
        )
        log(
            f"rank {self.env.rank}/{self.env.world_size} on {self.device} ({self.backend}): "
            f"{train_images} training images, {iters_per_epoch} iterations per epoch, "
            f"{planned} planned"
        )
        self._train(trainer, planned)

    def _setup_device(self) -> None:
        args, report = self.args, self.report
        if args.threads:
            torch.set_num_threads(args.threads)
        self.device = choose_device(args.device, self.env.local_rank)
        self.backend = choose_backend(args.backend, self.device)
        self.ops = DeviceOps(self.device)
        report.config.update({"device": str(self.device), "backend": self.backend or "default"})
        report.device = {
            "type": self.device.type,
            "name": self.ops.name(),
            "count": self.ops.count(),
            "total_mem_bytes": self.ops.total_memory(),
        }
        self.precision = Precision(self.hp["precision"], self.device, self.hp["fp16_loss_scale"])
        self.precision.check_device()
        init_distributed(self.env, self.backend, args.dist_timeout_s)
        self.comm = Comm(self.env.world_size, self.device, self.backend)
        report.run_id = self.comm.broadcast_object(report.run_id)  # one id, even if generated

    def _build_data(self, coco_train: Any, coco_val: Any) -> int:
        hp, env = self.hp, self.env
        pin = self.device.type == "cuda"
        train_set = data.CocoDetection(
            self.layout.train_images, coco_train, coco.train_image_ids(coco_train), flip=True
        )
        self.loader, self.sampler = data.train_loader(
            train_set, hp["batch_size"], hp["aspect_ratio_group_factor"], hp["workers"],
            env.rank, env.world_size, hp["seed"], pin,
        )  # fmt: skip
        if coco_val is not None:
            self.coco_val = coco_val
            self.val_ids = coco.val_image_ids(coco_val, hp["eval_max_images"])
            shard = data.shard(self.val_ids, env.rank, env.world_size)
            val_set = data.CocoDetection(self.layout.val_images, coco_val, shard, flip=False)
            self.val_loader = data.val_loader(val_set, hp["eval_batch_size"], hp["workers"], pin)
        return len(train_set)

    def _build_model(self) -> None:
        hp = self.hp
        model, layers = build_model(
            self.backbone_weights, hp["num_classes"], hp["trainable_backbone_layers"],
            hp["min_size"], hp["max_size"], hp["box_batch_size_per_image"],
        )  # fmt: skip
        hp["trainable_backbone_layers"] = layers  # what was actually used
        self.report.config["hparams"] = dict(hp)
        self.model = self.precision.prepare_model(model.to(self.device))
        params = self.precision.optimizer_params(self.model)  # fp16: the fp32 master copies
        self.optimizer = torch.optim.SGD(
            params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"]
        )
        self.net: torch.nn.Module = self.model
        if self.env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

    def _train(self, trainer: Trainer, planned: int) -> None:
        report, ops, hp = self.report, self.ops, self.hp
        ops.reset_peak_memory()
        self.comm.barrier()  # every rank starts training together: init ends here
        ops.synchronize()
        t_train = time.perf_counter()
        report.training_started = True
        report.timings["init_s"] = t_train - report.started_perf
        totals = RunTotals()
        for epoch in range(self.epochs):
            left = planned - totals.iterations
            if left <= 0:
                break
            self.events.emit("phase", phase="training", epoch=epoch, epochs=hp["epochs"])
            meter = trainer.train_epoch(epoch, left)
            self.events.emit(
                "epoch_end", epoch=epoch, epochs=self.epochs, iterations=meter.iterations,
                loss=meter.loss_mean, lr=meter.lr, train_s=meter.train_s, core_s=meter.core_s,
                skipped_steps=meter.skipped_steps, loss_scale=meter.loss_scale,
            )  # fmt: skip
            if self.val_loader is not None:
                self._evaluate(meter)
            totals.add(meter)
            report.epochs = totals.records()
            report.samples.update(
                rank_images=totals.images,
                rank_iterations=totals.iterations,
                epochs_completed=len(totals.epochs),
            )
            target = hp["target_map"]
            if meter.map is not None and target is not None and meter.map >= target:
                report.converged = True  # every rank has the same mAP: all stop together
                break
        ops.synchronize()
        self._finish(totals, time.perf_counter() - t_train)

    def _evaluate(self, meter: EpochMeter) -> None:
        images = len(self.val_ids)
        self.events.emit("phase", phase="evaluation", epoch=meter.epoch, images=images)
        self.ops.synchronize()
        t_eval = time.perf_counter()
        result = evaluate.evaluate(
            self.model, self.val_loader, self.coco_val, self.val_ids, self.device,
            self.precision, self.env.world_size, self._eval_progress(meter.epoch, images),
        )  # fmt: skip
        self.ops.synchronize()
        meter.eval_s = time.perf_counter() - t_eval
        meter.map = result["map"]
        self.events.emit("eval", epoch=meter.epoch, eval_s=meter.eval_s, images=images, **result)
        self.report.eval = dict(result, images=images)

    def _eval_progress(self, epoch: int, total: int) -> Optional[Callable[[int, bool], None]]:
        """Rank 0's images done, times the world size (an estimate of all ranks' images), as
        an `eval_progress` event: after the first batch, then at most every
        --progress-every-s seconds, and once inference is over (`scoring`: COCOeval runs)."""
        if not self.events.enabled:
            return None
        every_s, world = self.args.progress_every_s, self.env.world_size
        last = [0.0]

        def on_images(done: int, finished: bool) -> None:
            now = time.perf_counter()
            if finished or now - last[0] >= every_s:
                last[0] = now
                self.events.emit(
                    "eval_progress",
                    epoch=epoch,
                    images=total if finished else min(total, done * world),
                    total=total,
                    scoring=finished,
                )

        return on_images

    def _finish(self, totals: RunTotals, train_s: float) -> None:
        """Global image count, this rank's throughputs, the run's (for the done event), memory."""
        report = self.report
        own = {
            "train_s": train_s,
            "train_no_eval_s": totals.train_no_eval_s,
            "core_s": totals.core_s,
        }
        # outside the schema: the rank's own time without waiting for peers (stragglers)
        report.timings.update(
            own, eval_s=totals.eval_s, forward_s=totals.forward_s, data_s=totals.data_s
        )
        (global_images,) = self.comm.sum([totals.images])
        slowest = dict(zip(_TIMES, self.comm.max([own[k] for k in _TIMES])))
        report.samples["global_images"] = int(global_images)
        report.throughput = throughputs(int(global_images), own)
        report.run_throughput = throughputs(int(global_images), slowest)
        report.memory = self.ops.memory()
