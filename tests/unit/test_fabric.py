"""How ranks talked: NCCL's INFO lines (tests/fixtures/nccl, README there) parsed into a fabric
record, and run folders holding them published end to end: the run's columns, the warning when
ranks used sockets although the cluster names IB HCAs, `runs show`, `report` and the run page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from orchestrator.fabric import NCCL_LOG_FILE, fabric_of, parse_node
from orchestrator.runfolder.folder import join_nccl_logs, read_run_folder
from orchestrator.store.models import Run
from tests.support.store_fixtures import RUN_1X8, RUN_2X8

NCCL = Path(__file__).resolve().parents[1] / "fixtures" / "nccl"
NODES_2X8 = ["me-node1", "me-node2"]  # the nodes of RUN_2X8's manifest
HCAS = ["mlx5_0", "mlx5_1"]


def _logs(case: str, nodes: list[str]) -> dict[str, str]:
    return {n: (NCCL / case / f"{n}.log").read_text() for n in nodes}


def test_infiniband_on_both_nodes() -> None:
    fabric = fabric_of(_logs("ib-2x8", NODES_2X8), NODES_2X8, 2, "nccl")
    assert fabric is not None and fabric.transport == "ib"
    node = fabric.nodes[1]
    assert (node.node, node.transport) == ("me-node2", "ib")
    assert node.devices == ("mlx5_0:1/IB", "mlx5_1:1/IB")
    assert (node.inter, node.intra) == (("NET/IB",), ("P2P/IPC",))
    assert fabric.summary() == "ib (mlx5_0:1, mlx5_1:1); intra-node P2P/IPC"
    assert fabric.warnings == ()


def test_socket_fallback_lists_the_interface_and_warns_where_hcas_were_named() -> None:
    logs = _logs("socket-2x8", NODES_2X8)
    fabric = fabric_of(logs, NODES_2X8, 2, "nccl", {"me-node1": HCAS, "me-node2": ()})
    assert fabric is not None and fabric.transport == "socket"
    assert fabric.nodes[0].devices == ("eth0:192.168.0.11<0>",)
    assert fabric.nodes[0].inter == ("NET/Socket",) and fabric.nodes[0].intra == ("SHM",)
    assert fabric.summary() == "socket (eth0); intra-node SHM"
    assert fabric.warnings == (  # me-node2's cluster entry names no HCA: nothing was promised
        "node me-node1: ranks talked over TCP sockets (eth0), not InfiniBand, although the "
        "cluster file names ib_hcas mlx5_0,mlx5_1 (check the HCA ports, NCCL_IB_HCA and that "
        "the runtime's NCCL finds libibverbs)",
    )


def test_one_node_is_intra_node_although_the_ib_plugin_listed_hcas() -> None:
    fabric = fabric_of(
        _logs("intra-1x8", ["me-node1"]), ["me-node1"], 1, "nccl", {"me-node1": HCAS}
    )
    assert fabric is not None and fabric.transport == "intra-node"
    assert fabric.nodes[0].devices == () and fabric.nodes[0].intra == ("P2P/IPC",)
    assert fabric.summary() == "intra-node (P2P/IPC)"
    assert fabric.warnings == ()  # nothing crossed the network


def test_old_ring_lines_count_over_the_socket_plugin_listed_at_init() -> None:
    # NCCL 2.4 printed "NET/Socket : Using ..." although IB carried every ring.
    nodes = ["gpu-a", "gpu-b"]
    fabric = fabric_of(_logs("old-ring-2x4", nodes), nodes, 2, "nccl", {"gpu-a": ["mlx5_0"]})
    assert fabric is not None and fabric.transport == "ib"
    assert fabric.nodes[0].devices == ("mlx5_0:1/IB",)
    assert fabric.warnings == ()


def test_nodes_that_disagree_are_mixed_and_a_node_without_lines_is_unknown() -> None:
    logs = {
        "me-node1": _logs("ib-2x8", ["me-node1"])["me-node1"],
        "me-node2": _logs("socket-2x8", ["me-node2"])["me-node2"],
    }
    mixed = fabric_of(logs, NODES_2X8, 2, "nccl", {"me-node2": HCAS})
    assert mixed is not None and mixed.transport == "mixed"
    assert mixed.summary().startswith(
        "mixed (eth0, mlx5_0:1, mlx5_1:1): me-node1 ib, me-node2 socket"
    )
    assert len(mixed.warnings) == 1 and mixed.warnings[0].startswith("node me-node2:")
    half = fabric_of({"me-node1": logs["me-node1"]}, NODES_2X8, 2, "nccl")
    assert half is not None and half.transport == "ib"
    assert [n.transport for n in half.nodes] == ["ib", "unknown"]


def test_without_nccl_lines_a_gloo_run_is_tcp_and_others_are_not_recorded() -> None:
    gloo = fabric_of({}, ["n1"], 1, "gloo")
    assert gloo is not None and (gloo.transport, gloo.summary()) == ("gloo", "gloo (tcp)")
    assert fabric_of({"n1": "torchrun noise\n"}, ["n1"], 1, "nccl") is None
    # "Using network" alone (no channel lines) still names the plugin
    only = parse_node("n1", "h:1:2 [0] NCCL INFO Using network Socket\n")
    assert only.transport == "socket" and only.devices == ()


def test_join_nccl_logs_writes_each_process_file_after_the_other(tmp_path: Path) -> None:
    files = []
    for pid, text in ((4102, "b1\nb2\n"), (4101, "a1\na2")):  # the last line cut: still a line
        files.append(tmp_path / f"me-node1.{pid}.log")
        files[-1].write_text(text)
    join_nccl_logs(files, tmp_path / "node")
    assert (tmp_path / "node" / NCCL_LOG_FILE).read_text() == "a1\na2\nb1\nb2\n"
    join_nccl_logs([], tmp_path / "none")
    assert not (tmp_path / "none").exists()


def _with_nccl(folder: Path, case: str, hcas: list[str] | None) -> Path:
    """A run folder as collection leaves it: nodes/<node>/nccl.log, and ib_hcas in the manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for node in manifest["nodes"]:
        (folder / "nodes" / node["name"]).mkdir(parents=True, exist_ok=True)
        source = NCCL / case / f"{node['name']}.log"
        (folder / "nodes" / node["name"] / NCCL_LOG_FILE).write_text(source.read_text())
        if hcas:
            node["ib_hcas"] = hcas
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _stored(store: Any, run_id: str) -> tuple[Any, ...]:
    with store.reading() as conn:
        return tuple(
            conn.execute(
                select(Run.fabric_transport, Run.fabric_summary, Run.fabric, Run.warnings).where(
                    Run.run_id == run_id
                )
            ).one()
        )


def test_ingest_of_a_socket_fallback_run_stores_the_fabric_and_warns(
    sqlite_store: Any, sqlite_url: str, run_copy: Any, run_cli: Any
) -> None:
    folder = _with_nccl(run_copy(RUN_2X8), "socket-2x8", HCAS)
    assert read_run_folder(folder).manifest.nodes[0].ib_hcas == tuple(HCAS)
    sqlite_store.ingest([folder])
    transport, summary, fabric, warnings = _stored(sqlite_store, RUN_2X8)
    assert (transport, summary) == ("socket", "socket (eth0); intra-node SHM")
    assert fabric["nodes"][1] == {
        "node": "me-node2",
        "transport": "socket",
        "devices": ["eth0:192.168.0.12<0>"],
        "inter": ["NET/Socket"],
        "intra": ["SHM"],
    }
    assert [w.split(":")[0] for w in warnings] == ["node me-node1", "node me-node2"]
    assert all("TCP sockets (eth0), not InfiniBand" in w for w in warnings)

    shown = run_cli("--db", sqlite_url, "runs", "show", RUN_2X8, "--format", "json")
    run = json.loads(shown.out)["run"]
    assert (run["fabric_summary"], run["warnings"]) == (summary, warnings)
    table = run_cli("--db", sqlite_url, "runs", "show", RUN_2X8).out
    assert "ranks talked (NCCL)" in table and "socket eth0:192.168.0.11<0> via NET/Socket" in table
    report = run_cli("--db", sqlite_url, "report", "--run", RUN_2X8)
    assert report.exit_code == 0, report.err
    assert "- ranks talked (NCCL): socket (eth0); intra-node SHM\n" in report.out
    assert "#### Warnings" in report.out
    assert f"- {RUN_2X8}: {warnings[1]}\n" in report.out
    document = json.loads(
        run_cli("--db", sqlite_url, "report", "--run", RUN_2X8, "--format", "json").out
    )
    assert document["environment"]["ranks talked (NCCL)"] == [summary]
    assert document["warnings"] == {RUN_2X8: warnings}

    from orchestrator.web.app import create_app

    with TestClient(create_app(sqlite_url)) as client:
        page = client.get(f"/runs/{RUN_2X8}").text
        download = client.get(f"/seed.md?run={RUN_2X8}").text
    assert f"- {RUN_2X8}: {warnings[0]}\n" in download  # the report the web page hands out
    assert '<ul class="warnings" id="warnings"><li>node me-node1: ranks talked over TCP' in page
    assert (
        "socket (eth0); intra-node SHM<br>me-node1: socket eth0:192.168.0.11&lt;0&gt; via NET/Socket"
        in page
    )


def test_ingest_of_an_infiniband_run_and_of_the_same_folder_later_given_its_logs(
    sqlite_store: Any, run_copy: Any
) -> None:
    folder = run_copy(RUN_2X8)
    sqlite_store.ingest([folder])
    assert _stored(sqlite_store, RUN_2X8) == (None, None, None, None)  # no NCCL lines: not recorded
    _with_nccl(folder, "ib-2x8", HCAS)
    (summary,) = sqlite_store.ingest([folder])
    assert summary.changed  # the logs are part of the folder digest
    transport, text, fabric, warnings = _stored(sqlite_store, RUN_2X8)
    assert (transport, text, warnings) == (
        "ib",
        "ib (mlx5_0:1, mlx5_1:1); intra-node P2P/IPC",
        None,
    )
    assert [n["devices"] for n in fabric["nodes"]] == [["mlx5_0:1/IB", "mlx5_1:1/IB"]] * 2


def test_a_single_node_run_with_hcas_named_has_no_warning(sqlite_store: Any, run_copy: Any) -> None:
    folder = _with_nccl(run_copy(RUN_1X8), "intra-1x8", HCAS)
    sqlite_store.ingest([folder])
    assert _stored(sqlite_store, RUN_1X8)[::3] == ("intra-node", None)
    # even when the plugin chosen at init was the socket one: one node talks inside itself
    log = folder / "nodes" / "me-node1" / NCCL_LOG_FILE
    log.write_text(log.read_text().replace("Using network IB", "Using network Socket"))
    sqlite_store.ingest([folder])
    assert _stored(sqlite_store, RUN_1X8)[::3] == ("intra-node", None)


def test_a_nccl_log_of_a_node_not_in_the_run_is_refused(run_copy: Any) -> None:
    from orchestrator.errors import IngestError

    folder = run_copy(RUN_2X8)
    (folder / "nodes" / "stranger").mkdir(parents=True)
    (folder / "nodes" / "stranger" / NCCL_LOG_FILE).write_text("x\n")
    with pytest.raises(IngestError, match=r"stranger/nccl.log: node 'stranger' is not in"):
        read_run_folder(folder)


def test_stage_makes_the_nccl_folder_and_collect_joins_its_files_per_node(tmp_path: Path) -> None:
    from orchestrator.backends.ssh.launch import collect, stage
    from orchestrator.plan import build_plan, make_job
    from orchestrator.specs import CaseSettings, ClusterSpec, NodeSpec, SshSettings, Topology
    from orchestrator.transport import NodeSession

    node = NodeSpec("me-node1", "local", workdir=str(tmp_path / "node"))
    cluster = ClusterSpec(
        name="lab",
        vendor="nvidia",
        nodes=(node,),
        case=CaseSettings(data_dir=str(tmp_path)),
        source="lab.toml",
    )
    job = make_job(cluster, Topology.parse("1x2"), (node,), run_id="r1")
    plan = build_plan(job, workload_hash="h", visible_devices_var="CUDA_VISIBLE_DEVICES")
    pattern = plan.nodes[0].env_dict["NCCL_DEBUG_FILE"]
    recorded = (NCCL / "intra-1x8" / "me-node1.log").read_text().splitlines(keepends=True)
    with NodeSession(job.nodes, SshSettings()) as session:
        stage(session, plan, 30)
        for pid, lines in ((4102, recorded[16:]), (4101, recorded[:16])):  # as NCCL writes them
            Path(pattern.replace("%h", "me-node1").replace("%p", str(pid))).write_text(
                "".join(lines)
            )
        assert collect(session, plan, tmp_path / "local", 30) == {}
    joined = tmp_path / "local" / "nodes" / "me-node1" / NCCL_LOG_FILE
    assert joined.read_text() == "".join(recorded)  # process 4101's lines, then 4102's
    assert not (tmp_path / "local" / "nodes" / "me-node1" / "nccl").exists()
    assert not Path(plan.nodes[0].run_dir).exists()  # the node's run folder is removed
