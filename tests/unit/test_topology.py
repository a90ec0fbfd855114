import pytest

from orchestrator.config import embedded_default, parse_cluster
from orchestrator.errors import TopologyError
from orchestrator.specs import Topology, pick_nodes


@pytest.mark.parametrize(
    "text,nnodes,nproc",
    [("2x8", 2, 8), ("1x1", 1, 1), ("1x8", 1, 8), (" 4X2 ", 4, 2)],
)
def test_parse_valid_topologies(text, nnodes, nproc):
    topo = Topology.parse(text)
    assert (topo.nnodes, topo.nproc_per_node) == (nnodes, nproc)
    assert topo.world_size == nnodes * nproc
    assert str(topo) == f"{nnodes}x{nproc}"


@pytest.mark.parametrize("text", ["2x", "x8", "2x8x1", "", "two", "2*8", "-1x8", "2x-8", "2.0x8"])
def test_malformed_topologies_name_the_form(text):
    with pytest.raises(TopologyError) as err:
        Topology.parse(text)
    assert "NxM" in err.value.one_line()


@pytest.mark.parametrize("text", ["0x8", "2x0"])
def test_zero_nodes_or_processes_refused(text):
    with pytest.raises(TopologyError, match="zero"):
        Topology.parse(text)


def _cluster(n_nodes=3, accel=8):
    return parse_cluster(
        {
            "nodes": [
                {"name": f"n{i}", "address": f"127.0.0.{i + 2}", "accelerators": accel}
                for i in range(n_nodes)
            ]
        },
        "test.toml",
    )


def test_more_nodes_than_the_cluster_has():
    with pytest.raises(TopologyError) as err:
        pick_nodes(_cluster(3), Topology.parse("4x8"))
    assert "needs 4 nodes" in err.value.message and "has 3" in err.value.message


def test_more_processes_than_accelerators():
    with pytest.raises(TopologyError, match="has 8 accelerator"):
        pick_nodes(_cluster(3, accel=8), Topology.parse("1x16"))


def test_first_nodes_are_picked_in_order_and_named_ones_respected():
    cluster = _cluster(3)
    assert [n.name for n in pick_nodes(cluster, Topology.parse("2x8"))] == ["n0", "n1"]
    assert [n.name for n in pick_nodes(cluster, Topology.parse("2x8"), ["n2", "n0"])] == [
        "n2",
        "n0",
    ]


def test_named_nodes_must_match_topology_and_exist():
    cluster = _cluster(3)
    with pytest.raises(TopologyError, match="names 1"):
        pick_nodes(cluster, Topology.parse("2x8"), ["n0"])
    with pytest.raises(TopologyError, match="no node named 'zz'"):
        pick_nodes(cluster, Topology.parse("1x8"), ["zz"])
    with pytest.raises(TopologyError, match="twice"):
        pick_nodes(cluster, Topology.parse("2x8"), ["n0", "n0"])


def test_embedded_default_is_this_machine():
    spec = embedded_default()
    assert len(spec.nodes) == 1 and spec.nodes[0].is_local
    assert spec.store_url is None and spec.vendor == "cpu"
