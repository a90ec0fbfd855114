"""`orchestrator submit` end to end against real sshd nodes on loopback addresses, running the
real workload under real torchrun, results in SQLite (Postgres: test_submit_postgres.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.cluster_fixtures import (
    run_cli,
    run_processes,
    set_args,
    start_long_submit,
    stop,
    wait_for,
    workers_of,
    write_cluster_file,
)

pytestmark = [pytest.mark.sshd, pytest.mark.torch]

HOSTILE = 'co co\'s "set" $(touch {canary}) ;x'


def _db_rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _running(proc, db: Path, ranks: int) -> str:
    """This test's run id once its ranks run (other tests' runs may live on this machine)."""

    def rows() -> list[tuple]:
        try:
            return _db_rows(db, "SELECT run_id FROM runs") if db.exists() else []
        except sqlite3.OperationalError:  # the store is being created
            return []

    run_id = wait_for(rows, 120, "the run row")[0][0]

    def mine() -> list[dict]:
        return [p for p in workers_of(proc) if p["run_id"] == run_id]

    wait_for(lambda: len(mine()) == ranks, 180, "the ranks")
    return run_id


@pytest.fixture
def two_nodes(sshd_nodes, tiny_coco, tmp_path):
    cluster = sshd_nodes(3)
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes,
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
    )
    return cluster, cfg


def test_submit_2x1_runs_on_two_nodes_with_a_hostile_dataset_path(sshd_nodes, tiny_coco, tmp_path):
    cluster = sshd_nodes(3)
    canary = tmp_path / "pwned"
    data = tmp_path / HOSTILE.format(canary=canary)
    shutil.copytree(tiny_coco, data)
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes,
        cluster.ssh,
        data_dir=data,
        workdir_root=tmp_path / "nodes",
    )
    db = tmp_path / "results.db"
    assert run_cli(["--db", f"sqlite:///{db}", "db", "upgrade"], tmp_path).returncode == 0

    proc = run_cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1", *set_args()], tmp_path
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not canary.exists(), "a $(...) in the dataset path was executed"
    (run_id, status, topology, p_core, e2e) = _db_rows(
        db, "SELECT run_id, status, topology, p_core, e2e_time_s FROM runs"
    )[0]
    assert status == "succeeded" and topology == "2x1"
    assert p_core > 0 and e2e > 0
    ranks = _db_rows(
        db, f"SELECT rank, node_rank FROM rank_results WHERE run_id = '{run_id}' ORDER BY rank"
    )
    assert ranks == [(0, 0), (1, 1)]
    nodes = _db_rows(
        db,
        f"SELECT node_name, os, kernel FROM run_nodes WHERE run_id = '{run_id}' ORDER BY node_rank",
    )
    assert [n[0] for n in nodes] == [cluster.nodes[0].name, cluster.nodes[1].name]
    assert all(n[1] and n[2] for n in nodes), "environment not captured"
    # The run folder holds both rank files and both logs; the seed table row was printed.
    run_dir = tmp_path / "runs" / run_id
    assert sorted(p.name for p in (run_dir / "ranks").iterdir()) == [
        "rank-00000.json",
        "rank-00001.json",
    ]
    assert (run_dir / "logs" / f"{cluster.nodes[1].name}.log").stat().st_size > 0
    assert "| cpu 2x1 |" in proc.stdout
    # Nothing is left on the nodes: no process, no run folder.
    assert run_processes(run_id) == []
    assert not any((tmp_path / "nodes").glob(f"*/runs/{run_id}"))


def test_killed_rank_fails_the_run_within_seconds_naming_its_node(two_nodes, tmp_path):
    cluster, cfg = two_nodes
    db = tmp_path / "results.db"
    proc = start_long_submit(cfg, db, "2x1", tmp_path)
    try:
        victim = wait_for(lambda: workers_of(proc, "1"), 120, "rank of node 1 to start")[0]
        run_id = victim["run_id"]
        # Let training begin (rank files and progress need a live process group), then kill it.
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=90)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-2000:]
    assert took < 30, f"the run took {took:.1f}s to fail after the kill"
    node1 = cluster.nodes[1].name
    assert f"node {node1}" in err
    status, reason, failure = _db_rows(
        db, f"SELECT status, reason, failure FROM runs WHERE run_id = '{run_id}'"
    )[0]
    assert status == "failed" and json.loads(failure)["node"] == node1 and "rank 1" in reason
    assert run_processes(run_id) == [], "workload processes left behind"


def test_unreachable_node_fails_preflight_and_starts_nothing(
    sshd_nodes, silent_node, tiny_coco, tmp_path
):
    cluster = sshd_nodes(3)
    nodes = [cluster.nodes[0], silent_node("banner")]
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        nodes,
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
        connect_timeout_s=2,
    )
    db = tmp_path / "results.db"
    t0 = time.monotonic()
    proc = run_cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1", *set_args()], tmp_path
    )
    assert proc.returncode == 1
    assert time.monotonic() - t0 < 30
    assert nodes[1].name in proc.stderr and proc.stderr.count("\n") <= 4
    assert "Traceback" not in proc.stderr
    status, reason = _db_rows(db, "SELECT status, reason FROM runs")[0]
    assert status == "failed" and nodes[1].name in reason
    assert run_processes() == []
    assert not (tmp_path / "nodes" / cluster.nodes[0].name / "runs").exists(), (
        "something was staged"
    )


def test_changed_host_key_is_refused(changed_host_key_node, tiny_coco, tmp_path):
    cluster = changed_host_key_node
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes[:1],
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
    )
    proc = run_cli(
        [
            "--cluster",
            str(cfg),
            "--db",
            f"sqlite:///{tmp_path / 'r.db'}",
            "submit",
            "1x1",
            *set_args(),
        ],
        tmp_path,
    )
    assert proc.returncode == 1
    assert "host key" in proc.stderr.lower() and cluster.nodes[0].name in proc.stderr
    assert run_processes() == []


def test_doctor_gives_the_changed_host_key_remedy_that_submit_gives(
    changed_host_key_node, tiny_coco, tmp_path
):
    cluster = changed_host_key_node
    node = cluster.nodes[0]
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes[:1],
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
    )
    db = f"sqlite:///{tmp_path / 'r.db'}"
    doctor = run_cli(["--cluster", str(cfg), "--db", db, "doctor"], tmp_path)
    assert doctor.returncode == 3, doctor.stderr
    assert "Traceback" not in doctor.stdout + doctor.stderr
    remedy = (
        "(if the node was reinstalled, verify the new fingerprint with its admin, then remove "
        f"the old key with `ssh-keygen -R '[{node.address}]:{node.port}' -f "
        f"{cluster.known_hosts}` and connect again)"
    )
    lines = [line for line in doctor.stdout.splitlines() if line.startswith("connect failed")]
    assert len(lines) == 1, doctor.stdout
    line = lines[0]
    assert line.startswith(f"connect failed on 1 of 1 node: {node.name}: host key for ")
    assert "has CHANGED (possible man-in-the-middle attack)" in line
    assert line.endswith(f"; refused {remedy}")
    # Word for word the error `submit` stops with on the same node.
    submit = run_cli(["--cluster", str(cfg), "--db", db, "submit", "1x1", *set_args()], tmp_path)
    assert submit.returncode == 1
    assert f"failed: {line} (logs in " in submit.stderr


def test_sigint_cancels_the_run_and_cleans_every_node(two_nodes, tmp_path):
    cluster, cfg = two_nodes
    db = tmp_path / "results.db"
    proc = start_long_submit(cfg, db, "2x1", tmp_path)
    try:
        run_id = _running(proc, db, 2)
        code, out, err = stop(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, err[-2000:]
    assert "cancelled" in err
    status, reason = _db_rows(db, f"SELECT status, reason FROM runs WHERE run_id = '{run_id}'")[0]
    assert status == "cancelled"
    assert re.fullmatch(
        r"cancelled: `orchestrator submit` pid \d+ on \S+ got SIGINT \(Ctrl-C\)", reason
    )
    assert run_processes(run_id) == []
    manifest = json.loads((tmp_path / "runs" / run_id / "manifest.json").read_text())
    assert manifest["status"] == "cancelled"


@pytest.mark.parametrize("how", ["SIGTERM", "orchestrator cancel"])
def test_a_cancelled_run_names_who_stopped_it_and_submit_exits_with_its_code(
    two_nodes, tmp_path, how
):
    from orchestrator.runs.lifecycle import submitter

    _, cfg = two_nodes
    db = tmp_path / "results.db"
    proc = start_long_submit(cfg, db, "1x1", tmp_path)
    try:
        run_id = _running(proc, db, 1)
        if how == "SIGTERM":
            code, _, err = stop(proc, signal.SIGTERM)
        else:
            cancel = run_cli(["--db", f"sqlite:///{db}", "cancel", run_id], tmp_path)
            assert cancel.stdout == f"run {run_id}: cancel requested; its follower stops it\n"
            _, err = proc.communicate(timeout=60)
            code = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
    reason = _db_rows(db, f"SELECT reason FROM runs WHERE run_id = '{run_id}'")[0][0]
    if how == "SIGTERM":
        assert code == 143, err[-2000:]
        assert re.fullmatch(r"cancelled: `orchestrator submit` pid \d+ on \S+ got SIGTERM", reason)
    else:
        assert code == 4, err[-2000:]  # not 130: the submit itself got no signal
        assert reason == f"cancelled by `orchestrator cancel` from {submitter()}"
    assert f"error: run {run_id} {reason} (run folder " in err
    assert run_processes(run_id) == []
