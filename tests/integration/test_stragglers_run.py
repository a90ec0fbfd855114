"""Straggler scores on a real 2x1 run (two loopback sshd nodes, real torchrun, gloo, the cpu
profile): rank 1 is slowed from outside, stopped for 3/4 of every 0.2 s with SIGSTOP/SIGCONT,
so its own pace (data loading and forward, no waiting) is about four times rank 0's. It is
flagged with its node and device in the store, `runs show` and the run's final line; rank 0,
which waits for it inside the all-reduce, is not."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time

import pytest

from tests.support.cluster_fixtures import (
    TINY_SETS,
    run_cli,
    start_cli,
    wait_for,
    workers_of,
    write_cluster_file,
)

pytestmark = [pytest.mark.sshd, pytest.mark.torch]
SETS = [*TINY_SETS, "max_iters=8", "eval=false"]
STOP_S, RUN_S = 0.15, 0.05  # rank 1 runs a quarter of the time


def _pulse(pid: int, done: threading.Event) -> None:
    """SIGSTOP / SIGCONT rank 1 until it ends; always leaves it running."""
    try:
        while not done.is_set():
            os.kill(pid, signal.SIGSTOP)
            time.sleep(STOP_S)
            os.kill(pid, signal.SIGCONT)
            time.sleep(RUN_S)
    except ProcessLookupError:
        return
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_a_slowed_rank_is_flagged_with_its_node_and_device(sshd_nodes, tiny_coco, tmp_path):
    cluster = sshd_nodes(3)
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes[:2],
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
    )
    with open(cfg, "a") as f:  # the [stragglers] table, as an admin writes it
        f.write("\n[stragglers]\nslower_fraction = 0.25\n")
    db = tmp_path / "results.db"
    assert run_cli(["--db", f"sqlite:///{db}", "db", "upgrade"], tmp_path).returncode == 0
    args = ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1"]
    args += [a for s in SETS for a in ("--set", s)]
    proc = start_cli(args, tmp_path)
    done = threading.Event()
    pulser = None
    try:
        run_id = wait_for(lambda: _run_ids(db), 120, "the run row")[0]
        mine = lambda: [w for w in workers_of(proc, "1") if w["run_id"] == run_id]  # noqa: E731
        victim = wait_for(mine, 120, "rank of node 1 to start")[0]
        # slowed from the first iteration on: its start-up (imports, model) keeps its pace
        wait_for(lambda: _training(tmp_path, proc), 180, "training to start")
        pulser = threading.Thread(target=_pulse, args=(victim["pid"], done), daemon=True)
        pulser.start()
        out, err = proc.communicate(timeout=400)
    finally:
        done.set()
        if pulser is not None:
            pulser.join(5)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    node0, node1 = cluster.nodes[0].name, cluster.nodes[1].name
    with sqlite3.connect(db) as conn:
        ranks = conn.execute(
            "SELECT rank, node_name, device_index, pace_s, straggler_ratio, straggler "
            "FROM rank_results WHERE run_id = ? ORDER BY rank",
            (run_id,),
        ).fetchall()
        (stored,) = conn.execute(
            "SELECT stragglers FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
    (r0, n0, d0, pace0, ratio0, slow0), (r1, n1, d1, pace1, ratio1, slow1) = ranks
    assert (r0, n0, d0, slow0) == (0, node0, None, 0)
    assert (r1, n1, d1, slow1) == (1, node1, None, 1)
    print(f"paces: rank 0 {pace0:.3f} s/it, rank 1 {pace1:.3f} s/it")
    assert pace1 > 2 * pace0, (pace0, pace1)  # four times, give or take a loaded machine
    # the median of two ranks is their mean: ratios are 2 p / (p0 + p1)
    assert ratio1 == pytest.approx(2 * pace1 / (pace0 + pace1))
    assert ratio0 == pytest.approx(2 * pace0 / (pace0 + pace1))
    flagged = json.loads(stored)
    assert [(f["rank"], f["node"], f["device"]) for f in flagged] == [(1, node1, "cpu")]
    last = err.strip().splitlines()[-1]
    assert f"straggler: rank 1 on {node1}/cpu +" in last, last
    shown = run_cli(["--db", f"sqlite:///{db}", "runs", "show", run_id], tmp_path)
    assert f"straggler: rank 1 (node {node1}, device cpu) " in shown.stdout, shown.stdout
    assert "slower than the median rank" in shown.stdout


def _training(tmp_path, proc) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"submit ended early ({proc.returncode})")
    logs = list((tmp_path / "nodes").glob("*/runs/*/node.log"))
    return any('"training"' in p.read_text(errors="replace") for p in logs)


def _run_ids(db) -> list[str]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as conn:
            return [r[0] for r in conn.execute("SELECT run_id FROM runs")]
    except sqlite3.OperationalError:
        return []
