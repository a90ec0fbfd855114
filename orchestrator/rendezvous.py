"""The rendezvous host: node 0's address as every other node reaches it. Pure; the route
lookup is the caller's (transport/route.py). docs/ssh.md, "The master address"."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.errors import ConfigError
from orchestrator.specs import JobSpec, NodeSpec


@dataclass(frozen=True)
class Master:
    """The rendezvous host every node's torchrun dials, and why it is that one (--dry-run)."""

    address: str
    source: str


#: This machine's address on its route to a node, or None (transport/route.py).
RouteLookup = Callable[[NodeSpec], "str | None"]


def master_address(job: JobSpec, route: RouteLookup | None = None) -> Master:
    """Node 0's address as every other node reaches it: [cluster] master_addr when set, else
    node 0's own address; when node 0 is this machine (`local`) and other nodes are other
    hosts, this machine's source address on its route to them (one for all of them), never
    127.0.0.1. A run that cannot know that address is refused, naming master_addr."""
    cluster, first = job.cluster, job.nodes[0]
    others = [n for n in job.nodes if not n.is_local and not _loopback(n.address)]
    fix = (
        f"set master_addr under [cluster] in {cluster.source} to {first.name}'s address "
        "as the other nodes reach it"
    )
    if cluster.master_addr:
        if others and _loopback(cluster.master_addr):
            raise ConfigError(
                f"master_addr {cluster.master_addr} is a loopback address, but node "
                f"{others[0].name} is another host",
                fix,
            )
        return Master(cluster.master_addr, f"[cluster] master_addr of {cluster.source}")
    if not first.is_local:
        if others and _loopback(first.address):
            raise ConfigError(
                f"node 0 ({first.name}) has the loopback address {first.address}, but node "
                f"{others[0].name} is another host",
                fix,
            )
        return Master(first.address, f"node 0 ({first.name})'s address")
    if not others:
        return Master("127.0.0.1", "every node is this machine")
    return _route_master(job, others, route, fix)


def _route_master(
    job: JobSpec, others: list[NodeSpec], route: RouteLookup | None, fix: str
) -> Master:
    """Node 0 is this machine, `others` are other hosts: this machine's one source address on
    its routes to them."""
    cluster, first = job.cluster, job.nodes[0]
    where = (
        f'node 0 ({first.name}) is this machine (address = "local") and {others[0].name} '
        "is another host"
    )
    if cluster.ssh.jump_host:
        raise ConfigError(
            f"{where} reached through a jump host: no address of this machine is known to it", fix
        )
    found = {n.name: route(n) if route else None for n in others}
    addresses = set(found.values())
    if None in addresses or any(_loopback(a or "") for a in addresses):
        missing = next(name for name, a in found.items() if a is None or _loopback(a))
        raise ConfigError(f"{where}, and this machine has no route to {missing}", fix)
    if len(addresses) > 1:
        raise ConfigError(
            f"{where}; this machine reaches the nodes from several addresses "
            f"({', '.join(sorted(str(a) for a in addresses))})",
            fix,
        )
    return Master(
        str(found[others[0].name]), f"this machine's address on its route to {others[0].name}"
    )


def _loopback(address: str) -> bool:
    if address.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
