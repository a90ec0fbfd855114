"""The rendezvous address every node dials (orchestrator/rendezvous.py): node 0's
address as the other nodes see it, never 127.0.0.1 for a run that spans hosts, and a refusal
naming master_addr where nothing tells that address."""

from __future__ import annotations

import pytest

from orchestrator.config import parse_cluster
from orchestrator.errors import ConfigError
from orchestrator.plan import build_plan, make_job
from orchestrator.rendezvous import master_address
from orchestrator.specs import ClusterSpec, NodeSpec, SshSettings, Topology

LOCAL = NodeSpec("ctl", "local", workdir="/w")
N1 = NodeSpec("n1", "10.0.0.11", workdir="/w")
N2 = NodeSpec("n2", "10.0.0.12", workdir="/w")


def _job(*nodes: NodeSpec, master_addr: str | None = None, jump: str | None = None):
    cluster = ClusterSpec(
        "lab",
        "cpu",
        nodes,
        ssh=SshSettings(jump_host=jump),
        master_addr=master_addr,
        source="lab.toml",
    )
    return make_job(cluster, Topology(len(nodes), 1), nodes, run_id="r1")


def _routes(table: dict[str, str | None]):
    asked: list[str] = []

    def route(node: NodeSpec) -> str | None:
        asked.append(node.name)
        return table[node.name]

    return route, asked


def test_local_node_0_with_remote_nodes_is_this_machines_address_on_the_route_to_them() -> None:
    route, asked = _routes({"n1": "10.0.0.1", "n2": "10.0.0.1"})
    master = master_address(_job(LOCAL, N1, N2), route)
    assert master.address == "10.0.0.1"
    assert master.source == "this machine's address on its route to n1"
    assert asked == ["n1", "n2"]
    plan = build_plan(_job(LOCAL, N1, N2), workload_hash="h", master=master)
    assert {a for n in plan.nodes for a in n.torchrun_argv if a.startswith("--master-addr")} == {
        "--master-addr=10.0.0.1"
    }
    assert "master 10.0.0.1:29500 (this machine's address on its route to n1)" in plan.render()


def test_remote_node_0_is_its_address_and_no_route_is_looked_up() -> None:
    route, asked = _routes({})
    master = master_address(_job(N1, LOCAL), route)
    assert (master.address, master.source) == ("10.0.0.11", "node 0 (n1)'s address")
    assert asked == []


def test_configured_master_addr_wins_over_node_0_and_the_route() -> None:
    route, asked = _routes({"n1": "10.0.0.1"})
    master = master_address(_job(LOCAL, N1, master_addr="192.0.2.7"), route)
    assert (master.address, master.source) == ("192.0.2.7", "[cluster] master_addr of lab.toml")
    assert master_address(_job(N1, N2, master_addr="head.lab")).address == "head.lab"
    assert asked == []


def test_only_local_or_loopback_nodes_rendezvous_on_loopback() -> None:
    loop = NodeSpec("lo2", "127.0.0.2", workdir="/w")
    route, asked = _routes({})
    assert master_address(_job(LOCAL), route).address == "127.0.0.1"
    assert master_address(_job(LOCAL, loop), route).address == "127.0.0.1"
    assert asked == []


@pytest.mark.parametrize(
    ("job", "routes", "says"),
    [
        (lambda: _job(LOCAL, N1), {"n1": None}, "this machine has no route to n1"),
        (lambda: _job(LOCAL, N1), {"n1": "127.0.0.1"}, "this machine has no route to n1"),
        (lambda: _job(LOCAL, N1, jump="gw.lab"), {"n1": "10.0.0.1"}, "through a jump host"),
        (
            lambda: _job(LOCAL, N1, N2),
            {"n1": "10.0.0.1", "n2": "10.9.0.1"},
            "from several addresses (10.0.0.1, 10.9.0.1)",
        ),
        (lambda: _job(LOCAL, N1, master_addr="127.0.0.1"), {}, "is a loopback address"),
        (lambda: _job(NodeSpec("l", "localhost"), N1), {}, "has the loopback address localhost"),
    ],
)
def test_a_mix_with_no_address_the_other_nodes_reach_is_refused_naming_master_addr(
    job, routes, says
) -> None:
    route, _ = _routes(routes)
    with pytest.raises(ConfigError) as err:
        master_address(job(), route)
    line = err.value.one_line()
    assert says in line and "set master_addr under [cluster] in lab.toml" in line
    assert "\n" not in line


def test_build_plan_without_a_route_lookup_refuses_local_node_0_with_remote_nodes() -> None:
    with pytest.raises(ConfigError, match="no route to n1"):
        build_plan(_job(LOCAL, N1), workload_hash="h")


def _cluster_file(**cluster: object) -> dict[str, object]:
    return {"cluster": cluster, "nodes": [{"name": "a", "address": "local"}]}


@pytest.mark.parametrize("value", ["10.0.0.1", "fe80::1", "head-01.lab.example", "head"])
def test_master_addr_accepts_ip_addresses_and_host_names(value: str) -> None:
    assert parse_cluster(_cluster_file(master_addr=value), "c.toml").master_addr == value


def _refusal(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_cluster(data, "c.toml")
    return caught.value.one_line()


@pytest.mark.parametrize("value", ["local", "a b", "-head", "head_1", "http://x"])
def test_master_addr_refuses_what_is_not_an_address(value: str) -> None:
    assert _refusal(_cluster_file(master_addr=value)) == (
        f"c.toml: cluster.master_addr {value!r} is neither an IP address nor a host name (e.g. "
        'master_addr = "10.0.0.1", node 0\'s address as the other nodes reach it)'
    )


def test_an_empty_master_addr_is_refused_as_an_empty_string() -> None:
    assert _refusal(_cluster_file(master_addr="")) == (
        "c.toml: cluster.master_addr must be a non-empty string, got '' (e.g. "
        'master_addr = "...")'
    )


def test_master_addr_with_the_slurm_backend_is_refused() -> None:
    data = {"cluster": {"backend": "slurm", "master_addr": "10.0.0.1"}, "slurm": {}}
    assert _refusal(data) == (
        "c.toml: cluster.master_addr is not used by the slurm backend (node 0 is the "
        "allocation's first node) (remove master_addr; the batch script takes that node's "
        "NodeAddr)"
    )
