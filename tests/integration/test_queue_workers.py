"""Workers over real sshd nodes running the real workload: no node ever runs two runs at once,
and a SIGKILLed worker's run is adopted by the next worker and finished while the queue goes on."""

from __future__ import annotations

import signal
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.cluster_fixtures import (
    TINY_SETS,
    run_cli,
    run_processes,
    start_cli,
    wait_for,
    write_cluster_file,
)

pytestmark = [pytest.mark.sshd, pytest.mark.torch]


def _campaign(path: Path, cluster: Path, topologies: list[str], repeats: int) -> Path:
    sets = "\n".join(f"{k} = {v!r}" for k, v in (s.split("=", 1) for s in TINY_SETS))
    topo = ", ".join(f'"{t}"' for t in topologies)
    path.write_text(
        f'[campaign]\nname = "t"\nclusters = ["{cluster}"]\ntopologies = [{topo}]\n'
        f'repeats = {repeats}\nno_progress_timeout = "3m"\n\n[campaign.set]\n{sets}\n'
    )
    return path


def _rows(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def _time(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _setup(sshd_nodes, tiny_coco, tmp_path: Path, url: str) -> Path:
    cluster = sshd_nodes(3)
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes,
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
    )
    assert run_cli(["--db", url, "db", "upgrade"], tmp_path).returncode == 0
    return cfg


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_and_runs(request, tmp_path):
    """(store URL, campaign topologies, repeats): six runs on SQLite; four on Postgres, the
    same contention (1x1 and 2x1 on three nodes) in less time."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}", ["1x1", "2x1"], 3
    return request.getfixturevalue("pg_url"), ["1x1", "2x1"], 2


@pytest.mark.timeout(1800)  # waits up to 900 s for the workers, more than the 900 s default
def test_two_workers_six_runs_three_nodes_leases_never_overlap(
    store_and_runs, sshd_nodes, tiny_coco, tmp_path
):
    url, topologies, repeats = store_and_runs
    cfg = _setup(sshd_nodes, tiny_coco, tmp_path, url)
    camp = _campaign(tmp_path / "c.toml", cfg, topologies, repeats)
    total = len(topologies) * repeats
    queued = run_cli(["--db", url, "campaign", "submit", str(camp)], tmp_path)
    assert queued.returncode == 0, queued.stderr
    workers = [
        start_cli(["--db", url, "worker", "--id", f"w{i}", "--idle-exit", "3s"], tmp_path)
        for i in (1, 2)
    ]
    for w in workers:
        out, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-3000:]

    statuses = _rows(url, "SELECT status, count(*) FROM runs GROUP BY status")
    reasons = _rows(url, "SELECT run_id, reason FROM runs WHERE status <> 'succeeded'")
    assert statuses == [("succeeded", total)], reasons
    # Every claim names its nodes; a node's intervals [claimed, finished] never overlap.
    claims = _rows(
        url,
        "SELECT h.reason, h.at, r.finished_at FROM run_status_history h JOIN runs r "
        "USING (run_id) WHERE h.status = 'running' AND h.reason LIKE 'worker % leased %'",
    )
    assert len(claims) == total
    per_node: dict[str, list[tuple[datetime, datetime]]] = {}
    for reason, at, finished in claims:
        for node in reason.split(" leased ", 1)[1].split(", "):
            per_node.setdefault(node, []).append((_time(at), _time(finished)))
    for node, spans in per_node.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end <= start, f"{node} ran two runs at once"
    assert {r[0].split()[1] for r in claims} == {"w1", "w2"}  # both workers did work
    assert _rows(url, "SELECT count(*) FROM node_leases") == [(0,)]
    assert _rows(url, "SELECT status FROM campaigns") == [("finished",)]


@pytest.mark.timeout(1800)  # waits up to 900 s for the workers, more than the 900 s default
def test_sigkilled_worker_is_adopted_by_the_next_and_the_queue_goes_on(
    sshd_nodes, tiny_coco, tmp_path
):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    cfg = _setup(sshd_nodes, tiny_coco, tmp_path, url)
    camp = _campaign(tmp_path / "c.toml", cfg, ["2x1"], 2)
    assert run_cli(["--db", url, "campaign", "submit", str(camp)], tmp_path).returncode == 0
    ours = {r for (r,) in _rows(url, "SELECT run_id FROM runs")}
    first = start_cli(["--db", url, "worker", "--id", "doomed", "--lease-ttl", "6"], tmp_path)
    # Only this test's runs: other tests on this machine may run the workload too. Its ranks
    # run (not only the guard and sampler beside them): the workload goes on without a worker.
    procs = wait_for(
        lambda: [p for p in run_processes() if p["run_id"] in ours and p["local_rank"]],
        300,
        "the first run's ranks",
    )
    orphan = procs[0]["run_id"]
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    second = run_cli(
        ["--db", url, "worker", "--id", "heir", "--lease-ttl", "6", "--idle-exit", "12s"],
        tmp_path,
        timeout=900,
    )
    assert second.returncode == 0, second.stderr[-3000:]

    rows = dict(_rows(url, "SELECT run_id, status FROM runs"))
    assert rows == {r: "succeeded" for r in ours}  # the orphan too: adopted, finished, stored
    history = [
        r
        for (r,) in _rows(url, f"SELECT reason FROM run_status_history WHERE run_id = '{orphan}'")
        if r
    ]
    assert any(r.startswith("follow by heir: doomed stopped following") for r in history), history
    assert _rows(url, f"SELECT count(*) FROM rank_results WHERE run_id = '{orphan}'") == [(2,)]
    assert run_processes(orphan) == []
    assert not any((tmp_path / "nodes").glob(f"*/runs/{orphan}"))
    assert _rows(url, "SELECT count(*) FROM node_leases") == [(0,)]
    assert _rows(url, "SELECT status FROM campaigns") == [("finished",)]
