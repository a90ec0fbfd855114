"""Campaigns and `submit --detach` on a real Slurm (two slurmd on this machine): every run is its
own job, Slurm queues them, workers only follow the jobs and store the results; no node leases."""

from __future__ import annotations

import json
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

LONG_SETS = ["max_iters=400", "epochs=400", "eval=false"]


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _followers(db: Path) -> list[tuple]:
    """The follow rows, read-only: the store may not exist yet (connecting would create it)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT holder FROM slurm_follows").fetchall()
    except sqlite3.Error:
        return []


def _campaign_file(path: Path, clusters: list[Path], topologies: list[str]) -> Path:
    sets = "\n".join(
        f"{k} = {json.dumps(v)}" for k, v in (item.split("=", 1) for item in TINY_SETS)
    )
    path.write_text(
        "[campaign]\n"
        'name = "slurm-nightly"\n'
        f"clusters = {json.dumps([str(c) for c in clusters])}\n"
        f"topologies = {json.dumps(topologies)}\n"
        "[campaign.set]\n"
        f"{sets}\n"
    )
    return path


def test_a_campaign_on_slurm_submits_one_job_per_run_and_a_worker_stores_them(
    slurm_cluster, slurm_cfg, tmp_path
):
    db = tmp_path / "results.db"
    url = f"sqlite:///{db}"
    campaign = _campaign_file(tmp_path / "campaign.toml", [slurm_cfg()], ["1x1", "2x1"])
    sub = run_cli(["--db", url, "campaign", "submit", str(campaign)], tmp_path)
    assert sub.returncode == 0, sub.stderr[-2000:]
    assert "2 run(s) submitted to Slurm" in sub.stdout, sub.stdout
    rows = _rows(db, "SELECT run_id, status, backend, slurm_job_id FROM runs ORDER BY topology")
    assert [(r[1], r[2]) for r in rows] == [("running", "slurm")] * 2
    job_ids = [r[3] for r in rows]
    assert all(j and j.isdigit() for j in job_ids) and len(set(job_ids)) == 2
    # Slurm queues them, released (not held); the orchestrator leases no node for them.
    live = slurm_cluster.jobs()
    assert set(job_ids) <= set(live) or not live, (job_ids, live)
    assert _rows(db, "SELECT count(*) FROM node_leases") == [(0,)]
    q = run_cli(["--db", url, "queue", "--format", "json"], tmp_path)
    details = [r["detail"] for r in json.loads(q.stdout)]
    assert q.returncode == 0 and any(f"slurm job {job_ids[0]}, not followed" in d for d in details)

    worker = run_cli(
        ["--db", url, "worker", "--id", "w1", "--idle-exit", "2s"], tmp_path, timeout=400
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert "2 succeeded" in worker.stdout, worker.stdout + worker.stderr[-3000:]
    final = _rows(db, "SELECT run_id, status, slurm_job_id, world_size FROM runs")
    assert {(s, j) for _, s, j, _ in final} == {("succeeded", j) for j in job_ids}
    ranks = _rows(db, "SELECT count(*) FROM rank_results")[0][0]
    assert ranks == sum(w for *_, w in final) == 3
    assert _rows(db, "SELECT status FROM campaigns") == [("finished",)]
    assert _rows(db, "SELECT count(*) FROM slurm_follows") == [(0,)]
    assert _rows(db, "SELECT count(*) FROM node_leases") == [(0,)]
    for run_id, *_ in final:
        manifest = json.loads((tmp_path / "runs" / run_id / "manifest.json").read_text())
        assert manifest["backend"] == "slurm" and manifest["campaign_id"]
        assert run_processes(run_id) == []
    assert not any((tmp_path / "shared" / "runs").glob("*/ranks"))
    # The same report and query as for any run.
    (campaign_id,) = _rows(db, "SELECT campaign_id FROM campaigns")[0]
    rep = run_cli(["--db", url, "report", "--campaign", campaign_id, "--format", "csv"], tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "1x1" in rep.stdout and "2x1" in rep.stdout, rep.stdout
    sql = "SELECT backend, count(*) AS n FROM runs WHERE status = 'succeeded' GROUP BY backend"
    query = run_cli(["--db", url, "query", sql], tmp_path)
    assert query.returncode == 0 and "slurm" in query.stdout and "2" in query.stdout, query.stdout


def test_a_campaign_whose_last_job_is_refused_submits_nothing_and_leaves_no_job(
    slurm_cluster, slurm_cfg, tmp_path
):
    db = tmp_path / "results.db"
    good = slurm_cfg()
    bad = slurm_cfg(name="bad.toml")
    bad.write_text(bad.read_text().replace('partition = "test"', 'partition = "nope"'))
    campaign = _campaign_file(tmp_path / "campaign.toml", [good, bad], ["1x1"])
    res = run_cli(["--db", f"sqlite:///{db}", "campaign", "submit", str(campaign)], tmp_path)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "sbatch refused the job" in res.stderr and "partition" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert _rows(db, "SELECT count(*) FROM runs") == [(0,)]
    assert _rows(db, "SELECT count(*) FROM campaigns") == [(0,)]
    assert slurm_cluster.jobs() == []  # the good run's held job was cancelled
    assert list((tmp_path / "shared" / "runs").iterdir()) == []


def test_a_stopped_worker_leaves_the_job_to_slurm_and_another_follows_and_cancels_it(
    slurm_cluster, slurm_cfg, tmp_path
):
    db = tmp_path / "results.db"
    url = f"sqlite:///{db}"
    args = ["--cluster", str(slurm_cfg()), "--db", url, "submit", "2x1", "--detach"]
    sets = [a for item in [*TINY_SETS, *LONG_SETS] for a in ("--set", item)]
    sub = run_cli([*args, *sets], tmp_path)
    assert sub.returncode == 0, sub.stderr[-2000:]
    run_id = sub.stdout.split()[0]
    (job_id,) = _rows(db, f"SELECT slurm_job_id FROM runs WHERE run_id = '{run_id}'")[0]

    first = start_cli(["--db", url, "worker", "--id", "w1", "--lease-ttl", "4"], tmp_path)
    try:
        wait_for(
            lambda: run_processes(run_id) and _rows(db, "SELECT holder FROM slurm_follows"),
            timeout=120,
            what="the job running, followed by w1",
        )
        code, out, err = stop(first, sig=signal.SIGINT, timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert code == 0, err[-2000:]
    assert f"run {run_id}: left to Slurm" in err, err[-2000:]
    # The job goes on without a follower; the run is still running, its follow released.
    assert job_id in slurm_cluster.jobs()
    assert _rows(db, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("running",)]
    assert _rows(db, "SELECT count(*) FROM slurm_follows") == [(0,)]

    second = start_cli(
        ["--db", url, "worker", "--id", "w2", "--lease-ttl", "4", "--idle-exit", "1s"], tmp_path
    )
    try:
        wait_for(
            lambda: _rows(db, "SELECT holder FROM slurm_follows") == [("w2",)],
            timeout=60,
            what="w2 to adopt the run",
        )
        time.sleep(1)
        cancel = run_cli(["--db", url, "cancel", run_id], tmp_path)
        assert cancel.returncode == 0 and f"scancel {job_id}" in cancel.stdout, cancel.stderr
        out, err = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err[-2000:]
    assert f"following slurm job {job_id}" in err and "1 cancelled" in out, out + err[-2000:]
    status, reason = _rows(db, f"SELECT status, reason FROM runs WHERE run_id = '{run_id}'")[0]
    assert status == "cancelled" and "scancel" in reason, reason
    history = _rows(db, f"SELECT reason FROM run_status_history WHERE run_id = '{run_id}'")
    assert any("cancel requested by" in (r or "") for (r,) in history), history
    wait_for(lambda: run_processes(run_id) == [], timeout=30, what="no task left")
    assert job_id not in slurm_cluster.jobs()


def test_a_killed_submit_s_run_is_adopted_by_a_worker_and_stored(
    slurm_cluster, slurm_cfg, tmp_path
):
    db = tmp_path / "results.db"
    url = f"sqlite:///{db}"
    sets = [a for item in [*TINY_SETS, "max_iters=6"] for a in ("--set", item)]
    env = {"ORCHESTRATOR_FOLLOW_TTL_S": "4"}
    proc = start_cli(
        ["--cluster", str(slurm_cfg()), "--db", url, "submit", "2x1", *sets], tmp_path, env
    )
    try:
        holder = wait_for(
            lambda: proc.poll() is None and _followers(db),
            timeout=60,
            what="the submit following its job",
        )[0][0]
        assert holder.startswith("submit ")
        q = run_cli(["--db", url, "queue", "--format", "json"], tmp_path)
        details = [r["detail"] for r in json.loads(q.stdout)]
        assert any(f"followed by {holder} until" in d for d in details), q.stdout
        proc.kill()  # SIGKILL: no cleanup at all
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Nobody finalized the run; the job is Slurm's and goes on.
    (run_id, job_id, status) = _rows(db, "SELECT run_id, slurm_job_id, status FROM runs")[0]
    assert status == "running"
    # --idle-exit outlasts the dead submit's 4 s follow row: until it expires there is nothing
    # this worker may take.
    worker = run_cli(
        ["--db", url, "worker", "--id", "heir", "--lease-ttl", "4", "--idle-exit", "10s"],
        tmp_path,
        timeout=300,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert f"following slurm job {job_id}" in worker.stderr, worker.stderr[-3000:]
    status, reason = _rows(db, f"SELECT status, reason FROM runs WHERE run_id = '{run_id}'")[0]
    assert status == "succeeded", reason
    assert _rows(db, "SELECT count(*) FROM rank_results") == [(2,)]
    assert _rows(db, "SELECT count(*) FROM slurm_follows") == [(0,)]
    assert (tmp_path / "runs" / run_id / "manifest.json").exists()


def test_a_worker_fetches_a_detached_run_from_a_site_without_a_shared_file_system(
    slurm_cfg, tmp_path
):
    db = tmp_path / "results.db"
    url = f"sqlite:///{db}"
    cfg = node_local_cfg(slurm_cfg(), tmp_path)
    sets = [a for item in TINY_SETS for a in ("--set", item)]
    sub = run_cli(
        ["--cluster", str(cfg), "--db", url, "submit", "2x1", "--detach", *sets], tmp_path
    )
    assert sub.returncode == 0, sub.stderr[-2000:]
    worker = run_cli(["--db", url, "worker", "--idle-exit", "2s"], tmp_path, timeout=300)
    assert worker.returncode == 0 and "1 succeeded" in worker.stdout, worker.stderr[-3000:]
    assert "fetching the run folders from the nodes" in worker.stderr
    assert _rows(db, "SELECT count(*) FROM rank_results") == [(2,)]


def test_attach_adopts_a_killed_submit_s_slurm_run_and_stores_it(
    slurm_cluster, slurm_cfg, tmp_path
):
    db = tmp_path / "results.db"
    url = f"sqlite:///{db}"
    sets = [a for item in [*TINY_SETS, "max_iters=6"] for a in ("--set", item)]
    env = {"ORCHESTRATOR_FOLLOW_TTL_S": "4"}
    proc = start_cli(
        ["--cluster", str(slurm_cfg()), "--db", url, "submit", "2x1", *sets], tmp_path, env
    )
    try:
        wait_for(lambda: proc.poll() is None and _followers(db), 60, "the submit following")
        proc.kill()  # SIGKILL: no cleanup at all
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    (run_id, job_id) = _rows(db, "SELECT run_id, slurm_job_id FROM runs")[0]
    attach = run_cli(["--db", url, "attach", run_id], tmp_path, timeout=300)
    assert attach.returncode == 0, attach.stderr[-3000:]
    assert f"following slurm job {job_id}" in attach.stderr, attach.stderr[-3000:]
    assert f"succeeded: run {run_id} in " in attach.stderr
    assert _rows(db, "SELECT count(*) FROM rank_results") == [(2,)]
    assert _rows(db, "SELECT count(*) FROM slurm_follows") == [(0,)]
