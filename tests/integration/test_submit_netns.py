"""A run whose node 0 is this machine (`address = "local"`) and whose node 1 is another host:
node 1 lives in a network namespace of its own (tests/support/netns_testbed.py), with its own
loopback, so a rendezvous address of 127.0.0.1 would send it to itself. `orchestrator submit`
runs in the testbed's build-host namespace, whose address on the bridge is what node 1 must
dial (docs/ssh.md, "The master address")."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.specs import NodeSpec, SshSettings
from tests.support.cluster_fixtures import cli_env, run_processes, set_args, write_cluster_file
from tests.support.netns_testbed import BUILD_HOST_ADDRESS

pytestmark = [pytest.mark.sshd, pytest.mark.netns, pytest.mark.torch]


def _cluster_file(bed, tmp_path: Path, data_dir: Path) -> Path:
    local = NodeSpec(name="control", address="local")
    return write_cluster_file(
        tmp_path / "cluster.toml",
        [local, bed.nodes[0]],
        bed.ssh,
        data_dir=data_dir,
        workdir_root=tmp_path / "nodes",
        accelerators=1,
        socket_ifname="eth0",  # each namespace's link to the bridge
    )


def _cli(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def test_2x1_run_with_local_node_0_and_node_1_in_its_own_namespace_succeeds(
    testbed, tiny_coco, tmp_path
):
    bed = testbed(1, 1000, docker=False)
    cfg = _cluster_file(bed, tmp_path, tiny_coco)
    db = tmp_path / "results.db"
    cli = [sys.executable, "-m", "orchestrator", "--cluster", str(cfg), "--db", f"sqlite:///{db}"]

    dry = _cli(bed.build_host_argv([*cli, "submit", "2x1", "--dry-run"]), tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert f"master {BUILD_HOST_ADDRESS}:" in dry.stdout
    assert "this machine's address on its route to node1" in dry.stdout
    assert "--master-addr=127.0.0.1" not in dry.stdout

    started = time.monotonic()
    # With 127.0.0.1 node 1 would wait for a rendezvous on itself: bounded by --timeout.
    submit = [*cli, "submit", "2x1", "--timeout", "240", *set_args()]
    proc = _cli(bed.build_host_argv(submit), tmp_path)
    took = time.monotonic() - started

    assert proc.returncode == 0, proc.stderr[-3000:]
    with sqlite3.connect(db) as conn:
        (run_id, status, topology) = conn.execute(
            "SELECT run_id, status, topology FROM runs"
        ).fetchone()
        ranks = conn.execute(
            "SELECT rank, node_rank FROM rank_results WHERE run_id = ? ORDER BY rank", (run_id,)
        ).fetchall()
    assert (status, topology) == ("succeeded", "2x1")
    assert ranks == [(0, 0), (1, 1)]
    assert run_processes(run_id) == []
    assert bed.wait_for_no_leftovers() == {}
    phases = (tmp_path / "runs" / run_id / "timings.json").read_text()
    print(f"2x1 local + namespace node: submit {took:.1f} s, phases {phases}")


def test_local_node_0_without_a_route_to_node_1_is_refused_in_one_line(tiny_coco, tmp_path):
    """No master_addr, and this machine has no route to node 1 (a fresh, empty network
    namespace): nothing tells the address node 1 would reach node 0 at."""
    remote = NodeSpec(name="node1", address="198.18.0.11", user="root")
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        [NodeSpec(name="control", address="local"), remote],
        SshSettings(),
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
        accelerators=1,
    )
    db = tmp_path / "results.db"
    cli = [sys.executable, "-m", "orchestrator", "--cluster", str(cfg), "--db", f"sqlite:///{db}"]

    proc = _cli(["unshare", "--net", *cli, "submit", "2x1", *set_args()], tmp_path, 60)

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "no route to node1" in lines[0] and "master_addr under [cluster]" in lines[0]
    assert (
        not db.exists() and not (tmp_path / "runs").exists() and not (tmp_path / "nodes").exists()
    )
