"""A run outlives its submitter cleanly: `submit` killed (SIGKILL), hung up (SIGHUP) or frozen
on real sshd nodes running the real workload ends either adopted and finished (a worker,
`orchestrator attach`) or cleaned by the node guards alone and stored as `lost`; never with a
process, container or sampler left, never with a result lost."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.support.cluster_fixtures import (
    run_cli,
    run_processes,
    set_args,
    start_cli,
    wait_for,
    workers_of,
    write_cluster_file,
)

pytestmark = [pytest.mark.sshd, pytest.mark.torch]

# Long enough to kill the submitter mid-training, short enough to finish once adopted.
MEDIUM = ["max_iters=12", "epochs=12", "eval=false", "lr=0.0005"]
LONG = ["max_iters=400", "epochs=400", "eval=false", "lr=0.0005"]


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _maybe_rows(db: Path, sql: str) -> list[tuple]:
    try:
        return _rows(db, sql) if db.exists() else []
    except sqlite3.OperationalError:  # the store is being created
        return []


def _cluster(sshd_nodes, tiny_coco, tmp_path: Path, grace: float, runtime: str = "host") -> Path:
    cluster = sshd_nodes(3)
    return write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes,
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
        runtime=runtime,
        follower_grace_s=grace,
    )


def _submit(cfg: Path, db: Path, cwd: Path, sets: list[str]) -> subprocess.Popen[str]:
    args = ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1"]
    return start_cli([*args, *set_args(*sets)], cwd)


def _running_run(proc: subprocess.Popen[str], db: Path) -> str:
    """This test's run (other tests' runs may live on this machine), once both ranks run."""
    rows = wait_for(lambda: _maybe_rows(db, "SELECT run_id FROM runs"), 120, "the run row")
    run_id = rows[0][0]

    def ranks() -> list[dict]:
        return [p for p in workers_of(proc) if p["run_id"] == run_id]

    wait_for(lambda: len(ranks()) == 2, 180, "both ranks")
    return run_id


def _kill(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> float:
    proc.send_signal(sig)
    at = time.time()
    if sig == signal.SIGKILL:
        proc.communicate(timeout=30)
    return at


def _at(db: Path, run_id: str, like: str) -> float:
    (at,) = _rows(
        db,
        f"SELECT at FROM run_status_history WHERE run_id = '{run_id}' AND reason LIKE '{like}' "
        "ORDER BY at LIMIT 1",
    )[0]
    return datetime.fromisoformat(at).replace(tzinfo=timezone.utc).timestamp()


def _clean(tmp_path: Path, run_id: str) -> None:
    assert run_processes(run_id) == []
    assert not any((tmp_path / "nodes").glob(f"*/runs/{run_id}"))
    assert _rows(tmp_path / "results.db", "SELECT count(*) FROM node_leases") == [(0,)]


def test_sigkilled_submit_is_adopted_by_a_worker_and_succeeds(sshd_nodes, tiny_coco, tmp_path):
    grace = 15
    cfg = _cluster(sshd_nodes, tiny_coco, tmp_path, grace)
    db = tmp_path / "results.db"
    url = f"sqlite:///{db}"
    proc = _submit(cfg, db, tmp_path, MEDIUM)
    run_id = _running_run(proc, db)
    worker = start_cli(["--db", url, "worker", "--id", "heir", "--max-runs", "1"], tmp_path)
    killed = _kill(proc)
    out, err = worker.communicate(timeout=400)
    assert worker.returncode == 0, err[-3000:]
    ended = _rows(db, f"SELECT status, reason FROM runs WHERE run_id = '{run_id}'")
    assert [status for status, _ in ended] == ["succeeded"], ended
    assert _rows(db, f"SELECT count(*) FROM rank_results WHERE run_id = '{run_id}'") == [(2,)]
    adopted = _at(db, run_id, "follow by heir%")
    # ttl = grace / 3 = 5 s to expire, then the worker's next scan (every 5 s at most).
    print(f"SIGKILL -> adoption: {adopted - killed:.1f}s (grace {grace}s)")
    assert adopted - killed < grace
    (why,) = _rows(
        db,
        f"SELECT reason FROM run_status_history WHERE run_id = '{run_id}' "
        "AND reason LIKE 'follow by heir%'",
    )[0]
    assert "submit " in why and "stopped following" in why
    _clean(tmp_path, run_id)


def test_submit_killed_after_training_before_collection_is_published_by_attach(
    sshd_nodes, tiny_coco, tmp_path
):
    cfg = _cluster(sshd_nodes, tiny_coco, tmp_path, grace=90)
    db = tmp_path / "results.db"
    proc = _submit(cfg, db, tmp_path, [])
    run_id = _running_run(proc, db)
    proc.send_signal(signal.SIGSTOP)  # frozen: it neither follows nor collects
    try:
        # Training ends; the node guards stop the samplers and leave; only files stay.
        wait_for(lambda: run_processes(run_id) == [], 180, "the workload to end on its own")
        assert list((tmp_path / "nodes").glob(f"*/runs/{run_id}/ranks/rank-*.json"))
    finally:
        _kill(proc)
    attach = run_cli(["--cluster", str(cfg), "--db", f"sqlite:///{db}", "attach", run_id], tmp_path)
    assert attach.returncode == 0, attach.stderr[-3000:]
    assert f"succeeded: run {run_id} in " in attach.stderr
    assert "| p_core" in attach.stdout or "p_core" in attach.stdout
    assert _rows(db, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("succeeded",)]
    assert _rows(db, f"SELECT count(*) FROM rank_results WHERE run_id = '{run_id}'") == [(2,)]
    assert (tmp_path / "runs" / run_id / "ranks" / "rank-00000.json").exists()
    _clean(tmp_path, run_id)


def _lost_by_guards_alone(
    cfg: Path, tmp_path: Path, grace: float, after_kill: Callable[[str], None] | None = None
) -> tuple[str, float]:
    db = tmp_path / "results.db"
    proc = _submit(cfg, db, tmp_path, LONG)
    run_id = _running_run(proc, db)
    killed = _kill(proc)
    if after_kill is not None:
        after_kill(run_id)
    wait_for(lambda: run_processes(run_id) == [], grace + 30, "the node guards to end the run")
    cleaned = time.time() - killed
    print(f"SIGKILL -> nodes clean by their guards alone: {cleaned:.1f}s (grace {grace}s)")
    assert grace - 3 <= cleaned <= grace + 15
    # The first guard to fire ends its node's ranks; the peers' torchruns then fail and
    # their guards clean up after them: at least one node says it was abandoned.
    assert list((tmp_path / "nodes").glob(f"*/runs/{run_id}/abandoned"))
    return run_id, killed


def _runs_list_shows_lost(cfg: Path, tmp_path: Path, run_id: str, killed: float, grace: float):
    db = tmp_path / "results.db"
    time.sleep(max(0.0, killed + grace / 3 + grace + 6 - time.time()))
    listed = run_cli(["--cluster", str(cfg), "--db", f"sqlite:///{db}", "runs", "list"], tmp_path)
    assert listed.returncode == 0, listed.stderr[-3000:]
    (status, reason) = _rows(db, f"SELECT status, reason FROM runs WHERE run_id = '{run_id}'")[0]
    assert status == "lost", reason
    assert reason.startswith("submit ") and "stopped following" in reason
    assert "no follower within the grace; nodes n0, n1 cleaned" in reason or "cleaned" in reason
    assert run_id in listed.stdout and "lost" in listed.stdout
    _clean(tmp_path, run_id)


def _read_only_view(tmp_path: Path, run_id: str) -> tuple[str, str, str]:
    """(stored status, the run_followers view's follower, the run page) through read-only
    paths only: `orchestrator query` and the results pages' app."""
    from starlette.testclient import TestClient

    from orchestrator.web.app import create_app

    url = f"sqlite:///{tmp_path / 'results.db'}"
    sql = f"SELECT status, follower FROM run_followers WHERE run_id = '{run_id}'"
    shown = run_cli(["--db", url, "query", "--format", "json", sql], tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    (row,) = json.loads(shown.stdout)
    with TestClient(create_app(url), raise_server_exceptions=False) as client:
        page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200
    return row["status"], row["follower"], page.text


def _follower_gone(tmp_path: Path, run_id: str, grace: float) -> None:
    """Right after the kill, with no writing command run: `query` and the run page say the
    follower is gone and the run awaits adoption; the stored status is still `running`."""
    status, _, page = wait_for(
        lambda: (seen := _read_only_view(tmp_path, run_id))[1] == "gone" and seen,
        grace / 3 + 10,
        "query to say the follower is gone",
    )
    assert status == "running"
    assert re.search(r"running — follower gone since [-0-9]+ [:0-9]+ UTC, awaiting adoption", page)


def _awaiting_settling(tmp_path: Path, run_id: str, grace: float) -> None:
    """Past the grace, still with no writing command: the run awaits settling (lost)."""
    status, _, page = wait_for(
        lambda: (seen := _read_only_view(tmp_path, run_id))[1] == "lost-pending" and seen,
        grace + 30,
        "query to say the run awaits settling",
    )
    assert status == "running" and "awaiting settling (lost)" in page
    db = tmp_path / "results.db"
    assert _rows(db, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("running",)]


def test_sigkilled_submit_without_any_adopter_is_cleaned_by_the_nodes_and_marked_lost(
    sshd_nodes, tiny_coco, tmp_path
):
    grace = 10
    cfg = _cluster(sshd_nodes, tiny_coco, tmp_path, grace)
    run_id, killed = _lost_by_guards_alone(
        cfg, tmp_path, grace, lambda run_id: _follower_gone(tmp_path, run_id, grace)
    )
    _awaiting_settling(tmp_path, run_id, grace)
    _runs_list_shows_lost(cfg, tmp_path, run_id, killed, grace)


@pytest.mark.docker
def test_docker_runtime_sigkilled_submit_leaves_no_container(
    sshd_nodes, cpu_image, tiny_coco, tmp_path
):
    grace = 10
    cfg = _cluster(sshd_nodes, tiny_coco, tmp_path, grace, runtime="docker")
    run_id, killed = _lost_by_guards_alone(cfg, tmp_path, grace)
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=orchestrator.run_id={run_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert listed.stdout.split() == []
    _runs_list_shows_lost(cfg, tmp_path, run_id, killed, grace)


def test_sighup_leaves_the_run_going_and_attach_shows_it_to_success(
    sshd_nodes, tiny_coco, tmp_path
):
    cfg = _cluster(sshd_nodes, tiny_coco, tmp_path, grace=30)
    db = tmp_path / "results.db"
    proc = _submit(cfg, db, tmp_path, MEDIUM)
    run_id = _running_run(proc, db)
    proc.send_signal(signal.SIGHUP)
    attach = run_cli(["--cluster", str(cfg), "--db", f"sqlite:///{db}", "attach", run_id], tmp_path)
    out, err = proc.communicate(timeout=300)
    history = _rows(db, "SELECT status, reason FROM run_status_history")
    assert attach.returncode == 0, (attach.stderr[-3000:], history, err[-3000:])
    assert "iter" in attach.stderr or "epoch" in attach.stderr  # the live progress view
    assert f"succeeded: run {run_id} in " in attach.stderr
    assert proc.returncode == 0, err[-3000:]
    assert f"re-attach with `orchestrator attach {run_id}`" in err
    assert (tmp_path / "runs" / run_id / "submit.log").exists()
    assert _rows(db, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("succeeded",)]
    _clean(tmp_path, run_id)


def test_nodes_of_an_orphaned_run_are_refused_then_cancel_cleans_them(
    sshd_nodes, tiny_coco, tmp_path
):
    grace = 30
    cfg = _cluster(sshd_nodes, tiny_coco, tmp_path, grace)
    db = tmp_path / "results.db"
    url = f"sqlite:///{db}"
    proc = _submit(cfg, db, tmp_path, LONG)
    run_id = _running_run(proc, db)
    _kill(proc)
    second = run_cli(["--cluster", str(cfg), "--db", url, "submit", "2x1", *set_args()], tmp_path)
    assert second.returncode != 0
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"nodes busy: node1, node2 held by run {run_id} (follower submit " in lines[0]
    # the remedy repeats the --cluster and --db given (issue 23, item 4)
    assert f"`orchestrator --cluster {cfg} --db {url} cancel {run_id}`" in lines[0], lines[0]
    assert _rows(db, "SELECT count(*) FROM runs") == [(1,)]  # nothing half-written
    # A submit that may wait (--wait) waits for the nodes instead of refusing.
    waiting = start_cli(
        ["--cluster", str(cfg), "--db", url, "submit", "2x1", "--wait", *set_args()], tmp_path
    )
    # Once the dead submitter's leases expire (grace / 3), cancel cleans the nodes itself.
    time.sleep(grace / 3 + 1)
    assert waiting.poll() is None  # still waiting: the orphan holds the nodes
    cancelled = run_cli(["--cluster", str(cfg), "--db", url, "cancel", run_id], tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr[-3000:]
    assert f"run {run_id}: cancelled" in cancelled.stdout
    (status, reason) = _rows(db, f"SELECT status, reason FROM runs WHERE run_id = '{run_id}'")[0]
    assert status == "cancelled" and "after its follower was gone" in reason
    assert run_processes(run_id) == []
    assert not any((tmp_path / "nodes").glob(f"*/runs/{run_id}"))
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err[-3000:]
    assert f"waiting: nodes busy: node1, node2 held by run {run_id}" in err
    statuses = dict(_rows(db, "SELECT run_id, status FROM runs"))
    assert statuses.pop(run_id) == "cancelled" and list(statuses.values()) == ["succeeded"]
    _clean(tmp_path, run_id)


def test_after_sigkill_queue_and_attach_say_the_follower_is_gone_and_attach_replays_real_times(
    sshd_nodes, tiny_coco, tmp_path
):
    # A 30 s follower lease: it surely outlives `queue` and attach's start on a busy machine.
    cfg = _cluster(sshd_nodes, tiny_coco, tmp_path, grace=90)
    db = tmp_path / "results.db"
    proc = _submit(cfg, db, tmp_path, MEDIUM)
    run_id = _running_run(proc, db)
    pid = proc.pid
    _kill(proc)
    store = ["--cluster", str(cfg), "--db", f"sqlite:///{db}"]
    queue = run_cli([*store, "queue", "--format", "json"], tmp_path)
    assert queue.returncode == 0, queue.stderr
    detail = next(q["detail"] for q in json.loads(queue.stdout) if q["run_id"] == run_id)
    assert (
        f"pid {pid} on node1, node2, follower gone (no such process on this host), its " in detail
    )
    assert detail.endswith(f"then a worker or `orchestrator attach {run_id}` adopts the run")
    attach = run_cli([*store, "attach", run_id], tmp_path)
    assert attach.returncode == 0, attach.stderr[-3000:]
    err = attach.stderr
    assert f"succeeded: run {run_id} in " in err
    # While the dead submit's lease ran out, attach said what it waited for, then adopted.
    waited = re.search(
        rf"waiting for the lease: submit \S+ pid {pid} is gone \(no such process on this host\); "
        r"it runs out at \d\d:\d\d:\d\d UTC \(in \d+ s\), then this attach adopts the run",
        err,
    )
    assert waited and err.index(waited.group(0)) < err.index("adopted by attach"), err[-3000:]
    # The replayed lines keep the workload's times from the submission, not 0.0-0.1 s.
    before = err[: err.index("waiting for the lease")]
    stamps = [
        float(m.group(1)) for m in re.finditer(r"^\s+(\d+\.\d)s  (?:init|training)", before, re.M)
    ]
    assert stamps and stamps == sorted(stamps) and stamps[-1] >= 1.0, before
    _clean(tmp_path, run_id)
