"""Fixtures for the Faster R-CNN workload tests: synthetic COCO datasets, a ResNet-50 checkpoint
that stands in for the ImageNet one, a helper that runs the workload under real torchrun, and a
run folder around a rank file the workload really wrote."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# Tiny images and RoI samples keep a CPU step near a second (docs/workload.md, "Tests").
TINY = [
    "--min-size",
    "64",
    "--max-size",
    "64",
    "--workers",
    "0",
    "--set",
    "box_batch_size_per_image=64",
]


def workload_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key in (
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "ORCHESTRATOR_RUN_ID",
    ):
        env.pop(key, None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WorkloadRun:
    returncode: int
    stdout: str
    stderr: str
    output_dir: Path
    events: List[Dict[str, Any]] = field(default_factory=list)

    def rank_files(self) -> List[Path]:
        return sorted(self.output_dir.glob("rank-*.json"))

    def events_of(self, kind: str) -> List[Dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    def explain(self) -> str:
        return f"rc={self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr (tail)\n{self.stderr[-4000:]}"


def parse_events(stdout: str) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"event"')]


def run_module(
    args: Sequence[str], output_dir: Path, timeout: float = 300, **env: str
) -> WorkloadRun:
    """`python -m workload.faster_rcnn ARGS --output-dir OUTPUT_DIR` as a single process."""
    cmd = [sys.executable, "-m", "workload.faster_rcnn", *args, "--output-dir", str(output_dir)]
    proc = subprocess.run(
        cmd, cwd=str(REPO), env=workload_env(**env), capture_output=True, text=True, timeout=timeout
    )
    return WorkloadRun(
        proc.returncode, proc.stdout, proc.stderr, output_dir, parse_events(proc.stdout)
    )


def torchrun_cmd(nproc: int, port: int, nnodes: int = 1, node_rank: int = 0) -> List[str]:
    return [
        str(VENV_BIN / "torchrun"),
        "--nnodes", str(nnodes),
        "--node-rank", str(node_rank),
        "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1",
        "--master-port", str(port),
        "-m", "workload.faster_rcnn",
    ]  # fmt: skip


def run_torchrun(
    args: Sequence[str], output_dir: Path, nproc: int = 2, timeout: float = 300
) -> WorkloadRun:
    cmd = torchrun_cmd(nproc, free_port()) + [*args, "--output-dir", str(output_dir)]
    proc = subprocess.run(
        cmd, cwd=str(REPO), env=workload_env(), capture_output=True, text=True, timeout=timeout
    )
    return WorkloadRun(
        proc.returncode, proc.stdout, proc.stderr, output_dir, parse_events(proc.stdout)
    )


def make_synth(
    out: Path, images: int, val_images: int, size: int = 64, seed: int = 0, empty: int = 0
) -> Path:
    from workload.faster_rcnn.synth import generate

    generate(str(out), images, val_images, size=size, seed=seed, empty=empty)
    return out


@pytest.fixture(scope="session")
def synth_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 training images with objects + 2 without (dropped by the loader), 8 val images, 64 px."""
    return make_synth(tmp_path_factory.mktemp("synth") / "coco", images=16, val_images=8, empty=2)


@pytest.fixture(scope="session")
def backbone_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-50 state dict in torchvision's layout with calibrated BatchNorm statistics (so a
    frozen-BN backbone behaves), standing in for resnet50-0676ba61.pth, which tests cannot fetch."""
    import torch
    from torchvision.models import resnet50

    torch.manual_seed(0)
    net = resnet50()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    net.train()
    # the detector feeds ImageNet-normalised images; calibrate on the same kind of input
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        for _ in range(2):
            net((torch.rand(2, 3, 64, 64) - mean) / std)
    path = tmp_path_factory.mktemp("weights") / "resnet50-standin.pth"
    torch.save(net.state_dict(), path)
    return path


REAL_RUN_ID = "20260201-090000-1x1-cpu-real"


@pytest.fixture(scope="session")
def real_run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A succeeded run folder as `submit` leaves it, around a rank file the workload really
    wrote: one CPU process on 4 tiny synthetic images, `--epochs 1` under FlagPerf's loop rule
    (so two epochs of two iterations), evaluated on 2 images after each epoch (~10 s)."""
    from datetime import datetime, timezone

    from orchestrator.runfolder.folder import NodeRef, RunManifest, write_manifest
    from workload.faster_rcnn import result_format

    base = tmp_path_factory.mktemp("real-run")
    data = make_synth(base / "coco", images=4, val_images=2)
    folder = base / REAL_RUN_ID
    sets = ["flagperf_epochs=true", "box_batch_size_per_image=64"]
    args = [
        "--data-dir", str(data), "--backbone-weights", "none", "--epochs", "1",
        "--eval-max-images", "2", "--lr", "0.001", "--log-every", "1", "--run-id", REAL_RUN_ID,
        "--min-size", "64", "--max-size", "64", "--workers", "0",
        *[a for item in sets for a in ("--set", item)],
    ]  # fmt: skip
    run = run_module(args, folder / "ranks")
    assert run.returncode == 0, run.explain()
    (rank_file,) = run.rank_files()
    doc = result_format.load(str(rank_file))
    timings = doc["timings"]
    write_manifest(
        folder / "manifest.json",
        RunManifest(
            run_id=REAL_RUN_ID,
            case="faster_rcnn",
            vendor="cpu",
            cluster="local",
            backend="ssh",
            runtime="host",
            topology="1x1",
            nnodes=1,
            nproc_per_node=1,
            precision="fp32",
            submitted_by="tester",
            submitted_at=datetime.fromtimestamp(timings["start_unix"] - 5, timezone.utc),
            started_at=datetime.fromtimestamp(timings["start_unix"], timezone.utc),
            finished_at=datetime.fromtimestamp(timings["end_unix"], timezone.utc),
            status="succeeded",
            nodes=(NodeRef(doc["identity"]["host"], "127.0.0.1", 0),),
            hparams={"epochs": "1", "lr": "0.001", **dict(i.split("=", 1) for i in sets)},
            command="orchestrator submit 1x1 --set epochs=1 --set lr=0.001 ...",
        ),
    )
    return folder
