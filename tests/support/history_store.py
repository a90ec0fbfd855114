"""A configuration's long history in a real store, written as rows (runs, run_nodes, images,
image_wheels) with planted steps: a −6 % p_core at a driver change, +3 % at a wheel change. Used
by the change-point tests, the history page's browser test and bench/bench_history.py.

Rows are inserted directly (not ingested from run folders): a 10,000-run history from folders
takes minutes, and the change-point code reads only these tables."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import insert

from orchestrator.store import derived, open_store
from orchestrator.store.models import Image, ImageWheel, Run, RunEpoch, RunNode

VENDOR, LABEL, TOPOLOGY, PRECISION = "metax-c500", "MXC500 2x8", "2x8", "amp"
CONFIG = f"{VENDOR}:{TOPOLOGY}:{PRECISION}"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Step:
    at: int  # the first run of the new level
    factor: float  # p_core, p_train and p_whole are multiplied by it from `at` on
    field: str  # 'driver' or 'wheels': what changed there
    value: str


PLANTED = (Step(80, 0.94, "driver", "2.3.1"), Step(140, 1.03, "wheels", "torch-2.0.0+mc2.20"))


def levels(runs: int, steps: Sequence[Step], cv: float, seed: int) -> list[float]:
    """p_core per run: 500 img/s × the steps so far × (1 + cv × N(0, 1))."""
    rng = random.Random(seed)
    values = []
    for i in range(runs):
        level = 500.0
        for step in steps:
            if i >= step.at:
                level *= step.factor
        values.append(level * (1.0 + cv * rng.gauss(0.0, 1.0)))
    return values


def plant_history(
    url: str,
    runs: int = 200,
    steps: Sequence[Step] = PLANTED,
    cv: float = 0.02,
    seed: int = 1,
    prefix: str = "hist",
    vendor: str = VENDOR,
    label: str = LABEL,
) -> list[str]:
    """Write `runs` succeeded runs of one configuration, a day apart; returns their ids."""
    p_cores = levels(runs, steps, cv, seed)
    now = datetime.now(timezone.utc)
    wheel_images: dict[str, str] = {}
    run_rows: list[dict[str, Any]] = []
    node_rows: list[dict[str, Any]] = []
    epoch_rows: list[dict[str, Any]] = []
    ids = []
    for i, p_core in enumerate(p_cores):
        driver, wheel = "2.2.0", "torch-2.0.0+mc2.19"
        for step in steps:
            if i >= step.at and step.field == "driver":
                driver = step.value
            if i >= step.at and step.field == "wheels":
                wheel = step.value
        digest = hashlib.sha256(f"{prefix}{wheel}".encode()).hexdigest()
        image_id = wheel_images.setdefault(wheel, f"sha256:{digest}")
        run_id = f"{prefix}-{i:05d}"
        ids.append(run_id)
        finished = START + timedelta(days=i, hours=1)
        run_rows.append(_run(run_id, vendor, label, finished, image_id, p_core, now))
        for rank in range(2):
            node_rows.append(_node(run_id, rank, driver))
        for epoch in (1, 2):
            epoch_rows.append(_epoch(run_id, epoch, p_core))
    with open_store(url) as store, store.transaction() as conn:
        for wheel, image_id in wheel_images.items():
            conn.execute(
                insert(Image),
                [{"image_id": image_id, "tag": f"bench/{wheel}", "recorded_at": now}],
            )
            conn.execute(
                insert(ImageWheel),
                [{"image_id": image_id, "filename": f"{wheel}-cp38.whl", "sha256": "ab" * 32}],
            )
        for part in range(0, len(run_rows), 2000):
            conn.execute(insert(Run), run_rows[part : part + 2000])
        for part in range(0, len(node_rows), 4000):
            conn.execute(insert(RunNode), node_rows[part : part + 4000])
        for part in range(0, len(epoch_rows), 4000):
            conn.execute(insert(RunEpoch), epoch_rows[part : part + 4000])
        # Rows written by hand, as `db rebuild-summaries` is for: the summaries follow them.
        derived.rebuild(conn)
    return ids


def _run(
    run_id: str,
    vendor: str,
    label: str,
    finished: datetime,
    image_id: str,
    p_core: float,
    now: datetime,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "case": "faster_rcnn",
        "vendor": vendor,
        "hardware_label": label.split()[0],
        "cluster": "lab",
        "backend": "ssh",
        "runtime": "docker",
        "topology": TOPOLOGY,
        "nnodes": 2,
        "nproc_per_node": 8,
        "world_size": 16,
        "precision": PRECISION,
        "hparams": {"epochs": "2"},
        "fix_hp": "epochs=2",
        "config_label": label,
        "status": "succeeded",
        "submitted_by": "bench",
        "submitted_at": finished - timedelta(minutes=30),
        "started_at": finished - timedelta(minutes=25),
        "finished_at": finished,
        "image_id": image_id,
        "e2e_time_s": 1500.0 * 500.0 / p_core,
        "p_whole": p_core * 0.6,
        "p_train": p_core * 0.8,
        "p_core": p_core,
        "map": 0.371,
        "fabric_transport": "ib",
        "fabric_summary": "IB 2 x 200 Gb/s",
        "created_at": now,
    }


def _node(run_id: str, rank: int, driver: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "node_rank": rank,
        "node_name": f"me-node{rank + 1}",
        "kernel": "5.4.0-26-generic",
        "os": "Ubuntu 20.04.6 LTS",
        "driver": driver,
        "torch": "2.0.0+mc2.19.0.6",
    }


def _epoch(run_id: str, epoch: int, p_core: float) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "epoch": epoch,
        "ranks": 16,
        "iterations": 100,
        "images": 12800,
        "train_s": 30.0,
        "core_s": 25.0,
        "p_train": p_core * 0.8,
        "p_core": p_core,
        "map": 0.2 * epoch - 0.03,
    }
