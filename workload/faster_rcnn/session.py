"""One rank's benchmark run with torch: set up, train with per-epoch evaluation, aggregate.
Fills the RankReport as it goes so that a failure keeps everything measured so far."""

from __future__ import annotations

import argparse
import random
import time
from datetime import timedelta
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import coco, data, evaluate
from .comm import Comm
from .device import DeviceOps, Precision, choose_backend, choose_device
from .dist_env import DistEnv
from .hparams import Resolved
from .metrics import RunTotals, planned_iterations, throughputs
from .model import build_model
from .progress import Events, log
from .report import RankReport
from .schedule import resolve_warmup_iters
from .train import Trainer


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

    def run(self, coco_train: Any, coco_val: Any) -> None:
        """Train and evaluate; `coco_val` is None when evaluation is off."""
        args, env, hp, report = self.args, self.env, self.hp, self.report
        if args.threads:
            torch.set_num_threads(args.threads)
        device = choose_device(args.device, env.local_rank)
        backend = choose_backend(args.backend, device)
        ops = DeviceOps(device)
        report.config.update({"device": str(device), "backend": backend or "default"})
        report.device = {
            "type": device.type,
            "name": ops.name(),
            "count": ops.count(),
            "total_mem_bytes": ops.total_memory(),
        }
        precision = Precision(hp["precision"], device, hp["fp16_loss_scale"])
        init_distributed(env, backend, args.dist_timeout_s)
        comm = Comm(env.world_size, device, backend)
        report.run_id = comm.broadcast_object(report.run_id)

        torch.manual_seed(hp["seed"])
        random.seed(hp["seed"])
        pin = device.type == "cuda"
        train_set = data.CocoDetection(
            self.layout.train_images, coco_train, coco.train_image_ids(coco_train), flip=True
        )
        loader, sampler = data.train_loader(
            train_set,
            hp["batch_size"],
            hp["aspect_ratio_group_factor"],
            hp["workers"],
            env.rank,
            env.world_size,
            hp["seed"],
            pin,
        )
        val_loader, val_ids = None, []
        if coco_val is not None:
            val_ids = coco.val_image_ids(coco_val, hp["eval_max_images"])
            val_set = data.CocoDetection(
                self.layout.val_images,
                coco_val,
                data.shard(val_ids, env.rank, env.world_size),
                flip=False,
            )
            val_loader = data.val_loader(val_set, hp["eval_batch_size"], hp["workers"], pin)

        model, layers = build_model(
            self.backbone_weights,
            hp["num_classes"],
            hp["trainable_backbone_layers"],
            hp["min_size"],
            hp["max_size"],
            hp["box_batch_size_per_image"],
        )
        hp["trainable_backbone_layers"] = layers
        report.config["hparams"] = dict(hp)
        model = precision.prepare_model(model.to(device))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"]
        )
        net: torch.nn.Module = model
        if env.distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=device_ids)

        iters_per_epoch = len(loader)
        planned = planned_iterations(iters_per_epoch, hp["epochs"], hp["max_iters"])
        warmup = resolve_warmup_iters(hp["warmup_iters"], iters_per_epoch)
        report.extra["plan"] = {
            "iterations_per_epoch": iters_per_epoch,
            "planned_iterations": planned,
            "warmup_iters": warmup,
        }
        trainer = Trainer(
            net,
            optimizer,
            loader,
            sampler,
            ops,
            precision,
            comm,
            self.events,
            hp,
            warmup,
            planned,
            self.args.log_every,
        )
        self.events.emit(
            "start",
            run_id=report.run_id,
            world_size=env.world_size,
            nnodes=env.nnodes,
            device=str(device),
            backend=backend,
            precision=hp["precision"],
            batch_size=hp["batch_size"],
            epochs=hp["epochs"],
            iterations_per_epoch=iters_per_epoch,
            steps=planned,
            train_images=len(train_set),
            val_images=len(val_ids),
            config_name=report.config["config_name"],
        )
        log(
            f"rank {env.rank}/{env.world_size} on {device} ({backend}), {len(train_set)} train images, {iters_per_epoch} iterations/epoch, {planned} planned"
        )

        ops.reset_peak_memory()
        comm.barrier()  # everyone starts training together: init ends here
        ops.synchronize()
        t_train = time.perf_counter()
        report.training_started = True
        report.timings["init_s"] = t_train - report.started_perf
        totals = RunTotals()
        last_eval: Optional[Dict[str, float]] = None
        for epoch in range(hp["epochs"]):
            left = planned - totals.iterations
            if left <= 0:
                break
            meter = trainer.train_epoch(epoch, left)
            self.events.emit(
                "epoch_end",
                epoch=epoch,
                epochs=hp["epochs"],
                iterations=meter.iterations,
                loss=meter.loss_mean,
                lr=meter.lr,
                train_s=meter.train_s,
                core_s=meter.core_s,
            )
            if val_loader is not None:
                ops.synchronize()
                t_eval = time.perf_counter()
                last_eval = evaluate.evaluate(
                    model, val_loader, coco_val, val_ids, device, precision, env.world_size
                )
                ops.synchronize()
                meter.eval_s = time.perf_counter() - t_eval
                meter.map = last_eval["map"]
                self.events.emit(
                    "eval", epoch=epoch, eval_s=meter.eval_s, images=len(val_ids), **last_eval
                )
                report.eval = dict(last_eval, images=len(val_ids))
            totals.add(meter)
            report.epochs = totals.records()
            report.samples.update(
                {
                    "rank_images": totals.images,
                    "rank_iterations": totals.iterations,
                    "epochs_completed": len(totals.epochs),
                }
            )
            if (
                last_eval is not None
                and hp["target_map"] is not None
                and last_eval["map"] >= hp["target_map"]
            ):
                report.converged = True
                break
        ops.synchronize()
        train_s = time.perf_counter() - t_train
        self._finish(report, comm, ops, totals, train_s)

    def _finish(
        self, report: RankReport, comm: Comm, ops: DeviceOps, totals: RunTotals, train_s: float
    ) -> None:
        report.timings.update(
            {
                "train_s": train_s,
                "train_no_eval_s": totals.train_no_eval_s,
                "core_s": totals.core_s,
                "eval_s": totals.eval_s,
            }
        )
        (global_images,) = comm.sum([totals.images])
        slowest = comm.max([train_s, totals.train_no_eval_s, totals.core_s])
        max_times = dict(zip(("train_s", "train_no_eval_s", "core_s"), slowest))
        report.samples["global_images"] = int(global_images)
        report.throughput = throughputs(int(global_images), max_times)
        report.extra["slowest_rank_timings"] = max_times
        report.memory = ops.memory()
