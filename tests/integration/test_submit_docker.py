"""`orchestrator submit` with the Docker runtime: the workload runs in containers of the `cpu`
profile's image (torch from a wheelhouse), on sshd nodes that share this machine's daemon.
Distribution between separate daemons is tested in test_docker_distribution*.py."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from tests.support.cluster_fixtures import (
    run_cli,
    run_processes,
    set_args,
    start_long_submit,
    wait_for,
    workers_of,
    write_cluster_file,
)

pytestmark = [pytest.mark.sshd, pytest.mark.docker, pytest.mark.torch]


def _containers(run_id: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=orchestrator.run_id={run_id}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def _rows(db, sql):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def docker_cluster(sshd_nodes, cpu_image, tiny_coco, tmp_path):
    cluster = sshd_nodes(3)
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes,
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
        runtime="docker",
    )
    return cluster, cfg, cpu_image[0].tag


def test_submit_2x1_runs_in_containers_and_stores_run_and_image(docker_cluster, tmp_path):
    cluster, cfg, tag = docker_cluster
    db = tmp_path / "results.db"
    proc = run_cli(
        ["--cluster", str(cfg), "--db", f"sqlite:///{db}", "submit", "2x1", *set_args()], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id, status, runtime, image_tag, image_id = _rows(
        db, "SELECT run_id, status, runtime, image_tag, image_id FROM runs"
    )[0]
    assert (status, runtime, image_tag) == ("succeeded", "docker", tag)
    assert _rows(db, f"SELECT count(*) FROM images WHERE image_id = '{image_id}'") == [(1,)]
    # The ranks ran inside the image: its venv's interpreter, not this machine's.
    rank0 = json.loads((tmp_path / "runs" / run_id / "ranks" / "rank-00000.json").read_text())
    assert rank0["status"] == "ok" and rank0["identity"]["world_size"] == 2
    log = (tmp_path / "runs" / run_id / "logs" / f"{cluster.nodes[0].name}.log").read_text()
    assert "/opt/venv" in log or rank0["software"]["python"].startswith("3.11")
    assert _containers(run_id) == []
    assert run_processes(run_id) == []


def test_failing_rank_in_a_container_removes_every_container_of_the_run(docker_cluster, tmp_path):
    cluster, cfg, _ = docker_cluster
    db = tmp_path / "results.db"
    proc = start_long_submit(cfg, db, "2x1", tmp_path)
    try:

        def victim():
            found = workers_of(proc, "1")
            return found and len(_containers(found[0]["run_id"])) == 2 and found[0]

        target = wait_for(victim, timeout=180, what="both containers and rank 1")
        run_id = target["run_id"]
        time.sleep(2)
        os.kill(target["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-2000:]
    assert f"node {cluster.nodes[1].name}" in err
    assert _rows(db, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("failed",)]
    assert _containers(run_id) == [], "containers of the failed run remain"
    assert run_processes(run_id) == []
