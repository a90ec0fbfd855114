"""`orchestrator submit` through a real Slurm (two slurmd on this machine, see
tests/support/slurm_fixtures.py) running the real workload under torchrun; results in SQLite."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.cluster_fixtures import (
    TINY_SETS,
    run_cli,
    run_processes,
    start_cli,
    stop,
    wait_for,
)
from tests.support.slurm_fixtures import node_local_cfg

pytestmark = [pytest.mark.slurm, pytest.mark.torch]


def _sets(*extra: str) -> list[str]:
    args = []
    for item in [*TINY_SETS, *extra]:
        args += ["--set", item]
    return args


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _alive(proc) -> bool:
    if proc.poll() is not None:
        raise AssertionError(
            f"submit exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}"
        )
    return True


def _our_run_id(db: Path) -> str | None:
    """The run this test's submit created (other tests on the machine run workloads too)."""
    if not db.exists():  # connecting would create it, and submit refuses an empty store
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT run_id FROM runs").fetchall()
    except sqlite3.Error:
        return None
    return rows[0][0] if rows else None


def _ranks(db: Path, node_rank: str | None = None) -> list[dict]:
    run_id = _our_run_id(db)
    if run_id is None:
        return []
    return [
        p
        for p in run_processes(run_id)
        if p["local_rank"] == "0" and (node_rank is None or p["node_rank"] == node_rank)
    ]


def test_submit_2x1_through_slurm_runs_on_both_nodes_and_stores_the_run(slurm_cfg, tmp_path):
    db = tmp_path / "results.db"
    res = run_cli(
        ["--cluster", str(slurm_cfg()), "--db", f"sqlite:///{db}", "submit", "2x1", *_sets()],
        tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (run_id, status, backend, job_id, nnodes) = _rows(
        db, "SELECT run_id, status, backend, slurm_job_id, nnodes FROM runs"
    )[0]
    assert (status, backend, nnodes) == ("succeeded", "slurm", 2)
    assert job_id and job_id.isdigit()
    nodes = _rows(db, f"SELECT node_name, node_rank FROM run_nodes WHERE run_id = '{run_id}'")
    assert sorted(nodes) == [("n1", 0), ("n2", 1)]
    # The environment was captured on each allocated node, the rank results stored.
    envs = _rows(db, f"SELECT env FROM run_nodes WHERE run_id = '{run_id}'")
    assert all(json.loads(e)["python"] for (e,) in envs)
    run_dir = tmp_path / "runs" / run_id
    assert sorted(p.name for p in (run_dir / "ranks").iterdir()) == [
        "rank-00000.json",
        "rank-00001.json",
    ]
    assert (run_dir / "logs" / "n1.log").exists() and (
        run_dir / "nodes" / "n2" / "env.json"
    ).exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["backend"] == "slurm" and manifest["slurm_job_id"] == job_id
    # The monitor sampler ran beside torchrun on each node; its samples are stored per node.
    sampled = _rows(
        db,
        "SELECT DISTINCT node_name FROM monitor_samples "
        f"WHERE run_id = '{run_id}' AND metric = 'host_mem_used_bytes'",
    )
    assert sorted(sampled) == [("n1",), ("n2",)]
    assert (run_dir / "nodes" / "n1" / "monitor.jsonl").exists()
    # The batch shell's exit status, kept for a follower that comes after Slurm forgot the job.
    assert (run_dir / "logs" / "job.exit").read_text().strip() == "0"
    assert not (tmp_path / "shared" / "runs" / run_id).exists()
    assert run_processes(run_id) == []
    # The same report as any run.
    rep = run_cli(["--db", f"sqlite:///{db}", "runs", "show", run_id], tmp_path)
    assert rep.returncode == 0 and run_id in rep.stdout, rep.stderr


def test_a_failing_rank_ends_the_job_and_fails_the_run_with_the_reason(slurm_cfg, tmp_path):
    db = tmp_path / "results.db"
    proc = start_cli(
        [
            "--cluster",
            str(slurm_cfg()),
            "--db",
            f"sqlite:///{db}",
            "submit",
            "2x1",
            *_sets("max_iters=400", "epochs=400", "eval=false"),
        ],
        tmp_path,
    )
    try:
        victim = wait_for(
            lambda: _alive(proc) and _ranks(db, node_rank="1"),
            timeout=120,
            what="rank of node rank 1 to start",
        )[0]
        run_id = victim["run_id"]
        time.sleep(3)
        os.kill(victim["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    status, reason, failure = _rows(
        db, f"SELECT status, reason, failure FROM runs WHERE run_id = '{run_id}'"
    )[0]
    assert status == "failed", reason
    assert "rank 1" in reason and "n2" in reason and "slurm job" in reason, reason
    assert json.loads(failure)["node"] == "n2"
    assert run_processes(run_id) == [], f"task processes left behind: {run_processes(run_id)}"


def test_a_node_that_fails_preflight_fails_the_run_before_torchrun(
    slurm_cluster, slurm_cfg, tmp_path
):
    db = tmp_path / "results.db"
    cfg = slurm_cfg()
    cfg.write_text(
        cfg.read_text().replace("[case]\n", '[case]\nbackbone_weights = "/nonexistent/w.pth"\n')
    )
    res = run_cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1", *_sets()], tmp_path
    )
    assert res.returncode == 1, res.stderr[-2000:]
    status, reason, started = _rows(db, "SELECT status, reason, started_at FROM runs")[0]
    assert status == "failed" and "preflight" in reason and "/nonexistent/w.pth" in reason, reason
    assert "n1: weights" in reason and "n2: weights" in reason
    (run_id,) = _rows(db, "SELECT run_id FROM runs")[0]
    log = tmp_path / "runs" / run_id / "logs" / "n1.log"
    assert not log.exists() or "torch.distributed" not in log.read_text()


def test_ctrl_c_while_pending_cancels_the_job(slurm_cluster, slurm_cfg, tmp_path):
    db = tmp_path / "results.db"
    # --begin keeps the job pending (Slurm's reason: BeginTime) until it is cancelled.
    cfg = slurm_cfg("--begin=now+3600")
    proc = start_cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1", *_sets()], tmp_path
    )
    try:
        wait_for(lambda: _alive(proc) and slurm_cluster.jobs(), timeout=60, what="the job")
        time.sleep(2)
        code, _out, err = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, err[-2000:]
    assert "pending: BeginTime" in err, err[-2000:]
    status, reason, job_id = _rows(db, "SELECT status, reason, slurm_job_id FROM runs")[0]
    assert status == "cancelled" and "scancel" in reason
    assert job_id not in slurm_cluster.jobs()


def test_orchestrator_cancel_scancels_the_job_and_the_run_says_so(
    slurm_cluster, slurm_cfg, tmp_path
):
    db = tmp_path / "results.db"
    cfg = slurm_cfg("--begin=now+3600")
    proc = start_cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1", *_sets()], tmp_path
    )
    try:
        wait_for(lambda: _alive(proc) and slurm_cluster.jobs(), timeout=60, what="the job")
        run_id = wait_for(lambda: _our_run_id(db), timeout=30, what="the run row")
        wait_for(
            lambda: _rows(db, f"SELECT slurm_job_id FROM runs WHERE run_id = '{run_id}'")[0][0],
            timeout=30,
            what="the job id on the run",
        )
        job_id = _rows(db, f"SELECT slurm_job_id FROM runs WHERE run_id = '{run_id}'")[0][0]
        cancel = run_cli(["--db", f"sqlite:///{db}", "cancel", run_id], tmp_path)
        assert cancel.returncode == 0, cancel.stderr
        assert f"scancel {job_id}" in cancel.stdout
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 4, err[-2000:]  # not 130: the submit itself got no SIGINT
    status, reason = _rows(db, f"SELECT status, reason FROM runs WHERE run_id = '{run_id}'")[0]
    # Whichever the submit saw first: the job's CANCELLED state, or the cancel request.
    assert status == "cancelled", reason
    assert (
        f"slurm job {job_id} ended CANCELLED" in reason
        or "cancelled by `orchestrator cancel` from " in reason
    )
    assert job_id not in slurm_cluster.jobs()


def test_ctrl_c_while_running_cancels_the_job_and_leaves_no_task(
    slurm_cluster, slurm_cfg, tmp_path
):
    db = tmp_path / "results.db"
    proc = start_cli(
        [
            "--cluster",
            str(slurm_cfg()),
            "--db",
            f"sqlite:///{db}",
            "submit",
            "2x1",
            *_sets("max_iters=400", "epochs=400", "eval=false"),
        ],
        tmp_path,
    )
    try:
        running = wait_for(
            lambda: _alive(proc) and _ranks(db),
            timeout=120,
            what="the workload to start",
        )
        run_id = running[0]["run_id"]
        code, _out, err = stop(proc, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, err  # its own SIGINT (docs/output.md, "Exit codes")
    status, reason = _rows(db, f"SELECT status, reason FROM runs WHERE run_id = '{run_id}'")[0]
    assert status == "cancelled", reason
    assert reason.startswith("cancelled: `orchestrator submit` pid ") and "got SIGINT" in reason
    wait_for(lambda: run_processes(run_id) == [], timeout=30, what="no task left")
    slurm_cluster.wait_no_jobs(timeout=30)


def test_a_job_past_its_time_limit_ends_timeout_and_the_run_fails_saying_so(slurm_cfg, tmp_path):
    db = tmp_path / "results.db"
    cfg = slurm_cfg()
    cfg.write_text(cfg.read_text().replace('time_limit = "00:15:00"', 'time_limit = "00:01:00"'))
    res = run_cli(
        [
            "--cluster",
            str(cfg),
            "--db",
            f"sqlite:///{db}",
            "submit",
            "2x1",
            *_sets("max_iters=4000", "epochs=400", "eval=false", "lr=0.00001"),
        ],
        tmp_path,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr[-3000:]
    run_id, status, reason = _rows(db, "SELECT run_id, status, reason FROM runs")[0]
    assert status == "failed" and "ended TIMEOUT" in reason, reason
    assert run_processes(run_id) == []


def test_doctor_asks_slurm_about_the_exact_request_and_names_what_is_wrong(
    slurm_cluster, slurm_cfg, tmp_path
):
    good = run_cli(["--cluster", str(slurm_cfg()), "doctor", "2x1"], tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "sbatch --test-only" in good.stdout and "to start" in good.stdout, good.stdout
    assert "test: State=UP, 2 nodes" in good.stdout

    too_big = run_cli(["--cluster", str(slurm_cfg()), "doctor", "3x1"], tmp_path)
    assert too_big.returncode == 3 and "(the run needs 3)" in too_big.stdout, too_big.stdout

    bad = slurm_cfg(name="bad.toml")
    bad.write_text(bad.read_text().replace('partition = "test"', 'partition = "nope"'))
    res = run_cli(["--cluster", str(bad), "doctor", "1x1"], tmp_path)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "nope" in res.stdout and "FAIL" in res.stdout and "Traceback" not in res.stderr
    assert slurm_cluster.jobs() == []  # --test-only creates no job


def test_without_a_shared_file_system_results_are_fetched_from_the_nodes(slurm_cfg, tmp_path):
    db = tmp_path / "results.db"
    cfg = node_local_cfg(slurm_cfg(), tmp_path)
    res = run_cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1", *_sets()],
        tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fetching the run folders from the nodes" in res.stderr
    run_id, status = _rows(db, "SELECT run_id, status FROM runs")[0]
    assert status == "succeeded"
    assert _rows(db, "SELECT count(*) FROM rank_results") == [(2,)]
    nodes = _rows(db, f"SELECT node_name, env FROM run_nodes WHERE run_id = '{run_id}'")
    assert sorted(n for n, _ in nodes) == ["n1", "n2"] and all(e for _, e in nodes)
    run_dir = tmp_path / "runs" / run_id
    assert (run_dir / "logs" / "n2.log").exists() and (run_dir / "logs" / "slurm-job.log").exists()
    assert not (run_dir / ".fetched").exists()
    # The job removed its node-local run folders once they were fetched.
    wait_for(
        lambda: not (tmp_path / "node-local" / "runs" / run_id).exists(),
        timeout=30,
        what="the node-local run folder removed",
    )
    assert run_processes(run_id) == []


def test_without_a_shared_file_system_a_failed_preflight_is_fetched_and_named(slurm_cfg, tmp_path):
    db = tmp_path / "results.db"
    cfg = node_local_cfg(slurm_cfg(), tmp_path)
    cfg.write_text(
        cfg.read_text().replace("[case]\n", '[case]\nbackbone_weights = "/nonexistent/w.pth"\n')
    )
    res = run_cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1", *_sets()], tmp_path
    )
    assert res.returncode == 1, res.stderr[-2000:]
    status, reason = _rows(db, "SELECT status, reason FROM runs")[0]
    assert status == "failed" and "preflight" in reason, reason
    assert "n1: weights" in reason and "n2: weights" in reason, reason
