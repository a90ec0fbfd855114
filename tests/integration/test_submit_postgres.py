"""`orchestrator submit 2x2` on sshd nodes with the results in a real PostgreSQL server; the
store URL comes from the cluster file, as a lab sets it up."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from tests.support.cluster_fixtures import TINY_SETS, run_cli, run_processes, write_cluster_file

pytestmark = [pytest.mark.sshd, pytest.mark.torch, pytest.mark.postgres]


def test_submit_2x2_stores_run_ranks_and_environment_in_postgres(
    sshd_nodes, tiny_coco, pg_url, tmp_path
):
    cluster = sshd_nodes(3)
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes,
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
        store_url=pg_url,
    )
    upgrade = run_cli(["--cluster", str(cfg), "db", "upgrade"], tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr
    assert ":orchestrator@" not in upgrade.stdout + upgrade.stderr, "password printed"

    sets = [a for s in TINY_SETS for a in ("--set", s)]
    proc = run_cli(
        ["--cluster", str(cfg), "submit", "2x2", "--nodes", "node2,node3", *sets], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            run = conn.execute(
                text(
                    "SELECT run_id, status, topology, world_size, global_images, p_whole FROM runs"
                )
            ).one()
            ranks = conn.execute(
                text(
                    "SELECT rank, node_rank, host FROM rank_results WHERE run_id = :r ORDER BY rank"
                ),
                {"r": run.run_id},
            ).all()
            nodes = conn.execute(
                text(
                    "SELECT node_name, node_rank, kernel FROM run_nodes WHERE run_id = :r ORDER BY node_rank"
                ),
                {"r": run.run_id},
            ).all()
            seed = conn.execute(
                text("SELECT * FROM seed_table WHERE run_id = :r"), {"r": run.run_id}
            ).one()
    finally:
        engine.dispose()
    assert (run.status, run.topology, run.world_size) == ("succeeded", "2x2", 4)
    assert run.global_images > 0 and run.p_whole > 0
    assert [(r.rank, r.node_rank) for r in ranks] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert [(n.node_name, n.node_rank) for n in nodes] == [("node2", 0), ("node3", 1)]
    assert all(n.kernel for n in nodes)
    assert seed.run_id == run.run_id
    assert run_processes(run.run_id) == []
