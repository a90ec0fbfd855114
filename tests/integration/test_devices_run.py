"""An admin's own CUDA_VISIBLE_DEVICES on the host runtime, end to end: a real 1x2 run on this
machine (the `local` node) with a profile whose variable is CUDA_VISIBLE_DEVICES and whose
monitor tool is an nvidia-smi that replays four devices. The ranks get devices 3 and 1 in that
order, the sampler records only those two, and the run's mem is device 3's (docs/monitors.md)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster_fixtures import REPO, cli_env, set_args

pytestmark = [pytest.mark.torch]

MIB = 2**20
USED_MIB = {0: 9000, 1: 1200, 2: 8000, 3: 3400}  # 0 and 2 busy with someone else's job
FAKE_SMI = """#!/bin/sh
case "$1" in
  --query-gpu=index,*) printf '0, 9000, 40960, 300, 60, 99\\n1, 1200, 40960, 100, 40, 50\\n2, 8000, 40960, 290, 58, 97\\n3, 3400, 40960, 120, 45, 60\\n' ;;
  *) printf 'Fake GPU, 550.1, 40960 MiB\\nFake GPU, 550.1, 40960 MiB\\nFake GPU, 550.1, 40960 MiB\\nFake GPU, 550.1, 40960 MiB\\n' ;;
esac
"""


@pytest.fixture
def gpu_like(tmp_path: Path, tiny_coco: Path) -> tuple[Path, dict[str, str]]:
    """A cluster file for this machine alone, a `fakegpu` profile and the CLI's environment."""
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    profile = (images / "cpu" / "profile.toml").read_text()
    profile = profile.replace('name = "cpu"', 'name = "fakegpu"')
    profile = profile.replace(
        'visible_devices_env = ""', 'visible_devices_env = "CUDA_VISIBLE_DEVICES"'
    )
    profile = profile.replace("monitor = []", 'monitor = ["nvidia-smi"]')
    (images / "fakegpu").mkdir()
    (images / "fakegpu" / "profile.toml").write_text(profile)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(
        "\n".join(
            [
                '[cluster]\nname = "gpu-like"\nvendor = "fakegpu"',
                f'[case]\ndata_dir = {json.dumps(str(tiny_coco))}\nbackbone_weights = "none"',
                '[[nodes]]\nname = "here"\naddress = "local"\naccelerators = 4',
                f"python = {json.dumps(sys.executable)}",
                f"workdir = {json.dumps(str(tmp_path / 'node'))}",
            ]
        )
        + "\n"
    )
    env = cli_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        ORCHESTRATOR_IMAGES_DIR=str(images),
        ORCHESTRATOR_MONITOR_INTERVAL_S="1",
        GLOO_SOCKET_IFNAME="lo",
    )
    return cfg, env


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "orchestrator", *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_admins_devices_are_the_ranks_and_the_monitors_devices(gpu_like, tmp_path):
    cfg, env = gpu_like
    env = {**env, "CUDA_VISIBLE_DEVICES": "3,1"}
    db = tmp_path / "results.db"
    base = ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "1x2"]

    dry = _cli([*base, "--dry-run"], tmp_path, env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=3,1 " in dry.stdout
    assert "local ranks 0..1 on device(s) 3,1 (CUDA_VISIBLE_DEVICES of node here's" in dry.stdout

    proc = _cli([*base, *set_args("max_iters=4")], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with sqlite3.connect(db) as conn:
        run_id, mem_source, mem_used, mem_devices = conn.execute(
            "SELECT run_id, mem_source, mem_used_bytes, mem_devices FROM runs"
        ).fetchone()
        sampled = conn.execute(
            "SELECT DISTINCT device_index FROM monitor_samples "
            "WHERE device_index IS NOT NULL ORDER BY 1"
        ).fetchall()
    manifest = json.loads((tmp_path / "runs" / run_id / "manifest.json").read_text())
    assert manifest["nodes"][0]["devices"] == [3, 1]  # local rank 0 on 3, rank 1 on 1
    assert sampled == [(1,), (3,)]  # the sampler kept the run's devices only
    peaks = {d["device"]: d["used_bytes"] for d in json.loads(mem_devices)}
    assert peaks == {1: USED_MIB[1] * MIB, 3: USED_MIB[3] * MIB}
    assert (mem_source, mem_used) == ("device", USED_MIB[3] * MIB)


def test_fewer_devices_than_processes_per_node_is_refused_in_one_line(gpu_like, tmp_path):
    cfg, env = gpu_like
    env = {**env, "CUDA_VISIBLE_DEVICES": "3"}
    db = tmp_path / "results.db"
    proc = _cli(["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "1x2"], tmp_path, env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lists 1 device(s) (3)" in lines[0], proc.stderr
    assert "visible_devices" in lines[0]
    assert not db.exists() and not (tmp_path / "node").exists()
