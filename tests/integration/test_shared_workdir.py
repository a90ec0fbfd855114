"""Two nodes whose workdirs are one folder (a shared file system) would write one node.log and
collect each other's files: preflight and doctor refuse them, naming both, before anything
starts. Real sshd nodes on loopback addresses, one machine: their workdirs can be made one."""

from __future__ import annotations

from orchestrator.backends.ssh.doctor import run_doctor
from orchestrator.backends.ssh.preflight import NodeReport, shared_workdirs
from orchestrator.config import load_cluster
from tests.support.cluster_fixtures import run_cli, write_cluster_file


def test_shared_workdirs_names_every_node_of_a_shared_folder() -> None:
    reports = {
        "a": NodeReport("a", env={"workdir_id": "x"}),
        "b": NodeReport("b", env={"workdir_id": "x"}),
        "c": NodeReport("c", env={"workdir_id": "y"}),
        "d": NodeReport("d", env={}),
    }
    found = shared_workdirs(reports, {"a": "/w", "b": "/w", "c": "/v", "d": "/u"})
    assert sorted(found) == ["a", "b"]
    assert found["a"] == (
        "workdir: /w is the same folder as b's (a shared file system): give each node a "
        "workdir of its own on a node-local disk"
    )


def test_nodes_sharing_a_workdir_are_refused_by_submit_and_doctor(
    sshd_nodes, tiny_coco, tmp_path
) -> None:
    cluster = sshd_nodes(2)
    cfg = write_cluster_file(
        tmp_path / "cluster.toml",
        cluster.nodes,
        cluster.ssh,
        data_dir=tiny_coco,
        workdir_root=tmp_path / "nodes",
    )
    shared = tmp_path / "shared-work"  # both nodes' workdir: one folder, as on NFS
    text = cfg.read_text()
    for node in cluster.nodes:
        text = text.replace(str(tmp_path / "nodes" / node.name), str(shared))
    cfg.write_text(text)
    db = f"sqlite:///{tmp_path}/results.db"
    done = run_cli(
        ["--cluster", str(cfg), "--db", db, "submit", "2x1", "--set", "max_iters=1"], tmp_path, 120
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    first, second = (n.name for n in cluster.nodes)
    assert f"{first}: workdir: {shared} is the same folder as {second}'s" in done.stderr
    assert f"{second}: workdir: {shared} is the same folder as {first}'s" in done.stderr
    assert not (shared / "runs").exists(), "something was staged"

    report = run_doctor(load_cluster(str(cfg)), "2x1", None)
    shared_checks = [c for c in report.checks if c.check == "workdir shared"]
    assert [(c.node, c.ok) for c in shared_checks] == [(first, False), (second, False)]
    assert run_cli(["--cluster", str(cfg), "doctor", "2x1"], tmp_path, 120).returncode != 0
