"""A run that hangs in a collective: one rank of a real 2x1 run (two loopback sshd nodes, real
torchrun, gloo) is stopped with SIGSTOP mid-training. The no-progress timeout fires, the other
rank's Python stack is asked for (SIGUSR1 -> faulthandler) before the stop and kept in the run
folder, and the failure reason names the stopped rank and the collective the other waited in."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time

import pytest

from tests.support.cluster_fixtures import (
    LONG_SETS,
    run_processes,
    set_args,
    start_cli,
    wait_for,
    workers_of,
    write_cluster_file,
)

pytestmark = [pytest.mark.sshd, pytest.mark.torch]
QUIET_S = 30  # above rank 0's silence while it imports torch on a loaded machine (15 s was not)


def test_a_rank_stopped_mid_training_is_named_and_the_other_ranks_stack_is_kept(
    sshd_nodes, tiny_coco, tmp_path
):
    cluster = sshd_nodes(3)
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes[:2],
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
    )
    db = tmp_path / "results.db"
    args = ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1"]
    args += ["--no-progress-timeout", f"{QUIET_S}s", *set_args(*LONG_SETS)]
    proc = start_cli(args, tmp_path)
    victim = None
    try:
        run_id = _run_id(proc, db)  # other runs may live on this machine
        mine = lambda: [w for w in workers_of(proc, "1") if w["run_id"] == run_id]  # noqa: E731
        victim = wait_for(mine, 120, "rank of node 1 to start")[0]
        # training has begun once rank 0 reports progress; then freeze rank 1
        wait_for(lambda: '"training"' in _log(tmp_path, proc), 120, "training to start")
        time.sleep(2)
        os.kill(victim["pid"], signal.SIGSTOP)
        stopped_at = time.monotonic()
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - stopped_at
    finally:
        if victim is not None:
            try:
                os.kill(victim["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert took < 60, f"the run took {took:.1f}s to end after the stop"
    with sqlite3.connect(db) as conn:
        status, reason = conn.execute(
            "SELECT status, reason FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
    node0, node1 = cluster.nodes[0].name, cluster.nodes[1].name
    assert status == "failed"
    assert reason.startswith(f"no progress from rank 0 for {QUIET_S}s; stacks (stacks/): "), reason
    assert f"rank 1 on node {node1} was stopped and wrote no stack" in reason, reason
    stacks = tmp_path / "runs" / run_id / "stacks"
    kept = {p.name: p.read_text(errors="replace") for p in stacks.iterdir()}
    said = f"{reason}\n{kept}"
    assert f"rank 0 (node {node0}) waited in " in reason, said
    # DDP's gradient all-reduce in backward, or at the next forward its buffer broadcast or
    # (at the second step) the broadcast of its rebuilt bucket order; or, when the stop fell
    # after an epoch's last backward (the tiny epochs are a few steps), the epoch's loss sum
    assert (
        "waited in all_reduce (DDP's gradients, in backward)" in reason
        or "waited in broadcast (DDP's buffers)" in reason
        or "waited in broadcast (DDP's bucket order, before forward)" in reason
        or ("waited in all_reduce at train.py:" in reason and " in train_epoch" in reason)
    ), said
    # ... called from the workload's own frame (the innermost one on the stack)
    assert re.search(r"waited in [^;]+ at (train|device)\.py:\d+ in \w+", reason), said
    assert sorted(kept) == ["rank-00000.txt"]
    text = (stacks / "rank-00000.txt").read_text()
    assert "most recent call first" in text and "faster_rcnn/train.py" in text
    assert run_processes(run_id) == [], "workload processes left behind"


def _run_id(proc, db) -> str:
    def rows() -> list[tuple]:
        if proc.poll() is not None:
            raise AssertionError(f"submit ended early ({proc.returncode}): {proc.stderr.read()}")
        if not db.exists():  # connecting would make an empty file the submit refuses
            return []
        try:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT run_id FROM runs").fetchall()
        except sqlite3.OperationalError:  # the store is being created
            return []

    return wait_for(rows, 120, "the run row")[0][0]


def _log(tmp_path, proc) -> str:
    """What the submit wrote so far is not readable without blocking; the node's log is."""
    if proc.poll() is not None:
        raise AssertionError(f"submit ended early ({proc.returncode})")
    logs = list((tmp_path / "nodes").glob("*/runs/*/node.log"))
    return "".join(p.read_text(errors="replace") for p in logs)
