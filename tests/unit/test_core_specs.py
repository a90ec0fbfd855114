"""Topologies and node choice (orchestrator/specs.py): every refusal's exact message and remedy,
the plausibility bounds, and the processes-per-node check for named nodes too."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.errors import TopologyError
from orchestrator.specs import (
    CaseSettings,
    ClusterSpec,
    JobSpec,
    NodeSpec,
    Topology,
    pick_nodes,
    with_inputs,
)


def _refusal(call, *args) -> str:
    with pytest.raises(TopologyError) as caught:
        call(*args)
    return caught.value.one_line()


def test_topology_refusals_say_exactly_what_is_wrong_and_how_to_fix_it() -> None:
    assert _refusal(Topology.parse, "2y8") == (
        "topology '2y8' is not of the form NxM (write nodes x processes per node, e.g. 1x1, "
        "1x8 or 2x8)"
    )
    assert _refusal(Topology.parse, None) == (
        "topology None is not of the form NxM (write nodes x processes per node, e.g. 1x1, "
        "1x8 or 2x8)"
    )
    assert _refusal(Topology.parse, "0x8") == (
        "topology '0x8' asks for zero nodes or processes (both numbers must be at least 1, "
        "e.g. 2x8)"
    )
    assert _refusal(Topology.parse, "4097x1") == (
        "topology '4097x1' is implausibly large (check the numbers)"
    )


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("4096x1", True),
        ("4097x1", False),
        ("1x256", True),
        ("1x257", False),
        ("4096x256", True),
    ],
)
def test_topology_bounds_are_4096_nodes_and_256_processes_each(text: str, ok: bool) -> None:
    if ok:
        topo = Topology.parse(text)
        assert str(topo) == text
    else:
        with pytest.raises(TopologyError, match="implausibly large"):
            Topology.parse(text)


def _cluster(*accelerators: int, source: str = "lab.toml") -> ClusterSpec:
    nodes = tuple(
        NodeSpec(f"n{i}", f"10.0.0.{i}", accelerators=a) for i, a in enumerate(accelerators, 1)
    )
    return ClusterSpec("lab", "cpu", nodes, source=source)


def test_unknown_node_name_lists_the_known_nodes() -> None:
    cluster = _cluster(8, 8, 4)
    assert _refusal(cluster.node, "zz") == (
        "no node named 'zz' in lab.toml (known nodes: n1, n2, n3)"
    )
    assert cluster.node("n3").accelerators == 4


def test_topology_checks_with_named_nodes_apply_processes_per_node_to_each_named_node() -> None:
    """--nodes does not skip the 'processes <= accelerators' check: n3 has only 4."""
    cluster = _cluster(8, 8, 4)
    assert _refusal(pick_nodes, cluster, Topology.parse("2x8"), ["n1", "n3"]) == (
        "topology 2x8 needs 8 processes per node but node 'n3' has 4 accelerator(s) "
        "(ask for at most 4 per node, or fix accelerators in lab.toml)"
    )
    assert [n.name for n in pick_nodes(cluster, Topology.parse("2x4"), ["n3", "n1"])] == [
        "n3",
        "n1",
    ]
    assert [n.name for n in pick_nodes(cluster, Topology.parse("1x8"), ["n2"])] == ["n2"]


def test_topology_checks_without_names_apply_to_the_first_nodes_only() -> None:
    cluster = _cluster(8, 4, 8)
    assert [n.name for n in pick_nodes(cluster, Topology.parse("1x8"))] == ["n1"]
    assert _refusal(pick_nodes, cluster, Topology.parse("2x8")) == (
        "topology 2x8 needs 8 processes per node but node 'n2' has 4 accelerator(s) "
        "(ask for at most 4 per node, or fix accelerators in lab.toml)"
    )
    # Exactly as many accelerators as processes is enough.
    assert len(pick_nodes(cluster, Topology.parse("3x4"))) == 3


def test_topology_checks_name_the_counts_and_the_remedy() -> None:
    cluster = _cluster(8, 8, 8)
    assert _refusal(pick_nodes, cluster, Topology.parse("4x8")) == (
        "topology 4x8 needs 4 nodes but cluster 'lab' has 3 (add nodes to lab.toml or ask for "
        "fewer)"
    )
    assert len(pick_nodes(cluster, Topology.parse("3x8"))) == 3
    # no cluster file (the embedded default, one local node): the remedy is to write one
    assert _refusal(pick_nodes, _cluster(8, source="<embedded default>"), Topology(2, 1)) == (
        "topology 2x1 needs 2 nodes but cluster 'lab' has 1 (describe the nodes in a cluster "
        "file (docs/cluster-file.md) and pass --cluster FILE, or ask for fewer)"
    )
    assert _refusal(pick_nodes, cluster, Topology.parse("2x8"), ["n1"]) == (
        "topology 2x8 needs 2 node(s) but --nodes names 1 (name exactly as many nodes as the "
        "topology's first number)"
    )
    assert _refusal(pick_nodes, cluster, Topology.parse("2x8"), ["n1", "n1"]) == (
        "a node is named twice in --nodes (name each node once)"
    )
    assert _refusal(pick_nodes, cluster, Topology.parse("1x8"), ["n1", "n1"]) == (
        "a node is named twice in --nodes (name each node once)"
    )


def test_run_folder_on_a_node_is_its_workdir_runs_run_id() -> None:
    node = NodeSpec("n1", "10.0.0.1", workdir="/raid/bench")
    job = JobSpec("r1", _cluster(1), Topology(1, 1), (node,))
    assert str(job.run_dir_on(node)) == "/raid/bench/runs/r1"
    assert NodeSpec("l", "local").is_local and not node.is_local


def test_submits_data_dir_and_backbone_weights_replace_only_the_cases_own() -> None:
    case = CaseSettings("/data", "/w/r50.pth", "metax-c500:1x8", {"lr": "0.1"})
    cluster = replace(_cluster(8), case=case)
    assert with_inputs(cluster, None, None) is cluster
    assert with_inputs(cluster, "/other", None) == replace(
        cluster, case=CaseSettings("/other", "/w/r50.pth", "metax-c500:1x8", {"lr": "0.1"})
    )
    assert with_inputs(cluster, None, "none").case == CaseSettings(
        "/data", "none", "metax-c500:1x8", {"lr": "0.1"}
    )
    both = with_inputs(cluster, "/d2", "/w2.pth")
    assert (both.case.data_dir, both.case.backbone_weights, both.nodes) == (
        "/d2",
        "/w2.pth",
        cluster.nodes,
    )


def test_a_node_without_a_workdir_gets_its_login_users_own() -> None:
    import getpass

    assert NodeSpec("n", "h").workdir == f"/var/tmp/orchestrator-{getpass.getuser()}"
    assert NodeSpec("n", "h", user="bob-x").workdir == "/var/tmp/orchestrator-bob-x"
    assert NodeSpec("n", "h", user="bob-x", workdir="/w").workdir == "/w"
