"""Monitors during a real run: sshd nodes on loopback, the tiny workload under torchrun, the cpu
profile (no vendor tool). Every node's series lands in monitor_samples; the sampler ends with
the run; the report of the stored run prints the table with its plots."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.support.cluster_fixtures import TINY_SETS, run_cli, run_processes, write_cluster_file

pytestmark = [pytest.mark.sshd, pytest.mark.torch]


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_a_run_stores_host_series_and_a_tool_missing_marker_for_every_node(
    sshd_nodes, tiny_coco, tmp_path, monkeypatch
):
    monkeypatch.setenv("ORCHESTRATOR_MONITOR_INTERVAL_S", "1")
    cluster = sshd_nodes(3)
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes,
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
    )
    db = tmp_path / "results.db"
    url = f"sqlite:///{db}"
    assert run_cli(["--db", url, "db", "upgrade"], tmp_path).returncode == 0
    sets = [arg for item in TINY_SETS for arg in ("--set", item)]
    proc = run_cli(["--cluster", str(cfg), "--db", url, "submit", "2x1", *sets], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ((run_id,),) = _rows(db, "SELECT run_id FROM runs")
    names = [cluster.nodes[0].name, cluster.nodes[1].name]
    for name in names:
        assert (tmp_path / "runs" / run_id / "nodes" / name / "monitor.jsonl").stat().st_size > 0
    series = _rows(
        db,
        "SELECT node_name, metric, count(*), min(value), max(device_index) FROM monitor_samples "
        f"WHERE run_id = '{run_id}' GROUP BY node_name, metric ORDER BY node_name, metric",
    )
    by_node = {(node, metric): (n, low, dev) for node, metric, n, low, dev in series}
    for name in names:
        n, low, _ = by_node[(name, "host_mem_used_bytes")]
        assert n >= 2 and low > 0  # sampled every second during a run of tens of seconds
        n, low, _ = by_node[(name, "host_cpu_util_percent")]
        assert n >= 1 and low >= 0
        assert (
            _rows(
                db,
                f"SELECT max(value) FROM monitor_samples WHERE run_id = '{run_id}' "
                f"AND node_name = '{name}' AND metric = 'host_cpu_util_percent'",
            )[0][0]
            > 0
        )
        assert by_node[(name, "monitor_tool_missing")][0] == 1  # the cpu profile has no tool
    assert not [metric for _, metric in by_node if metric.startswith("device_")]
    assert run_processes(run_id) == []  # the samplers ended with the run
    assert not any((tmp_path / "nodes").glob(f"*/runs/{run_id}"))

    # Done when: `orchestrator report` prints the seed's filled-in table with plots beside it.
    report = run_cli(["--db", url, "report", "--plots", str(tmp_path / "plots")], tmp_path)
    assert report.returncode == 0, report.stderr
    assert "| cpu 2x1 |" in report.stdout and "| 1 |" in report.stdout
    for name in ("throughput-scaling.png", "history.png", "vendors.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0
        assert f"plots/{name})" in report.stdout
