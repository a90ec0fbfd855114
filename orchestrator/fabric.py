"""How a run's ranks talked: NCCL's own INFO lines, parsed into a small typed record.

The launcher sets NCCL_DEBUG=INFO, NCCL_DEBUG_SUBSYS=INIT,NET and NCCL_DEBUG_FILE (plan.py,
`nccl_log_env`), so every rank process writes its lines to a file of its own instead of the node
log; the run folder keeps them as `nodes/<node>/nccl.log` (docs/run-folder.md). The lines read:

    host:pid:tid [dev] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB [RO]; OOB ib0:10.0.0.1<0>
    host:pid:tid [dev] NCCL INFO NET/Socket : Using [0]eth0:10.0.0.1<0>
    host:pid:tid [dev] NCCL INFO Using network IB
    host:pid:tid [dev] NCCL INFO Channel 00/0 : 7[7] -> 8[0] [send] via NET/IB/0/GDRDMA
    host:pid:tid [dev] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC
    host:pid:tid [dev] NCCL INFO Ring 00 : 3 -> 4 [send] via NET/IB/0     (NCCL 2.4 and older)

What carried inter-node traffic is read from the channel lines (`via NET/<plugin>/...`) first,
then from `Using network <plugin>`; the devices are those the chosen plugin listed. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.states import FabricTransport as Transport

NCCL_LOG_FILE = "nccl.log"  # RUN_DIR/nodes/<node>/nccl.log
MAX_LOG_CHARS = 4 * 1024 * 1024  # a node's NCCL lines kept for parsing; INIT,NET is far less

_INFO = re.compile(r"\bNCCL INFO (.*)$")
_PLUGIN_USING = re.compile(r"^NET/(IB|Socket)\s*:\s*Using\s+(.*)$")
_DEVICE = re.compile(r"\[\d+\]([^\s\[\];]+)")
_USING_NETWORK = re.compile(r"^Using network (\S+)")
_CHANNEL = re.compile(r"^(?:Channel|Ring) \d+(?:/\d+)?\s*:.*\bvia (\S+)")
_PLUGINS = {"ib": "ib", "socket": "socket"}


@dataclass(frozen=True)
class NodeFabric:
    """What one node's NCCL lines said."""

    node: str
    transport: Transport  # what carried this node's inter-node traffic
    devices: tuple[str, ...]  # HCA ports ("mlx5_0:1/IB") or interfaces ("eth0:10.0.0.1<0>")
    inter: tuple[str, ...]  # inter-node paths seen, e.g. "NET/IB", "NET/Socket"
    intra: tuple[str, ...]  # intra-node paths seen, e.g. "P2P/IPC", "SHM"

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "transport": self.transport,
            "devices": list(self.devices),
            "inter": list(self.inter),
            "intra": list(self.intra),
        }


@dataclass(frozen=True)
class Fabric:
    """How a run's ranks talked, per node and overall; `warnings` compare it with the cluster."""

    transport: Transport
    nodes: tuple[NodeFabric, ...]
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"transport": self.transport, "nodes": [n.as_dict() for n in self.nodes]}

    def summary(self) -> str:
        """One line for tables: 'ib (mlx5_0:1, mlx5_1:1); intra-node P2P/IPC'."""
        if self.transport == "gloo":
            return "gloo (tcp)"
        devices = sorted({_short(d) for n in self.nodes for d in n.devices})
        intra = sorted({p for n in self.nodes for p in n.intra})
        if self.transport in ("intra-node", "unknown"):
            return self.transport + (f" ({', '.join(intra)})" if intra else "")
        head: str = self.transport
        if devices:
            head += f" ({', '.join(devices)})"
        if self.transport == "mixed":
            head += ": " + ", ".join(f"{n.node} {n.transport}" for n in self.nodes)
        return head + (f"; intra-node {', '.join(intra)}" if intra else "")


def _short(device: str) -> str:
    """'mlx5_0:1/IB' -> 'mlx5_0:1'; 'eth0:10.0.0.1<0>' -> 'eth0'."""
    name = device.split("/")[0]
    return name.split(":")[0] if "<" in device else name


def _path(via: str) -> str:
    """'NET/IB/0/GDRDMA' -> 'NET/IB'; 'P2P/IPC/read' -> 'P2P/IPC'; 'SHM/direct/direct' -> 'SHM'."""
    parts = via.split("/")
    if parts[0] in ("NET", "P2P") and len(parts) > 1:
        return "/".join(parts[:2])
    return parts[0]


def parse_node(node: str, text: str) -> NodeFabric:
    """One node's NCCL lines (every rank process's, in any order) -> what they used."""
    listed: dict[str, list[str]] = {}  # plugin -> devices it listed
    networks: set[str] = set()
    inter: set[str] = set()
    intra: set[str] = set()
    for line in text.splitlines():
        match = _INFO.search(line)
        if match is None:
            continue
        message = match.group(1).strip()
        if (using := _PLUGIN_USING.match(message)) is not None:
            plugin = using.group(1).lower()
            for device in _DEVICE.findall(using.group(2)):
                if device not in listed.setdefault(plugin, []):
                    listed[plugin].append(device)
        elif (network := _USING_NETWORK.match(message)) is not None:
            networks.add(network.group(1).lower())
        elif (channel := _CHANNEL.match(message)) is not None:
            path = _path(channel.group(1))
            (inter if path.startswith("NET/") else intra).add(path)
    used = {p.split("/")[1].lower() for p in inter} or networks
    known = sorted(_PLUGINS[p] for p in used if p in _PLUGINS)
    transport: Transport
    if len(known) == 1:
        transport = "ib" if known[0] == "ib" else "socket"
    elif len(known) > 1:
        transport = "mixed"
    elif intra:
        transport = "intra-node"
    else:
        transport = "unknown"
    devices = tuple(d for p in known for d in listed.get(p, []))
    return NodeFabric(node, transport, devices, tuple(sorted(inter)), tuple(sorted(intra)))


def fabric_of(
    logs: Mapping[str, str],
    nodes: Sequence[str],
    nnodes: int,
    rank_backend: str | None = None,
    expected_hcas: Mapping[str, Sequence[str]] | None = None,
) -> Fabric | None:
    """The run's fabric from each node's NCCL lines (`logs`: node -> text), nodes in node-rank
    order. None when there is nothing to tell: no NCCL lines and not a gloo run. A node whose
    cluster entry names IB HCAs (`expected_hcas`) but whose ranks used sockets gets a warning."""
    if not any(_INFO.search(text) for text in logs.values()):
        if rank_backend == "gloo":
            return Fabric("gloo", ())
        return None
    per_node = tuple(parse_node(name, logs.get(name, "")) for name in nodes)
    transports = {n.transport for n in per_node if n.transport != "unknown"}
    run: Transport
    if nnodes == 1:
        single = per_node[0].transport if per_node else "unknown"
        run = "intra-node" if single != "unknown" else "unknown"
        per_node = tuple(
            NodeFabric(n.node, "intra-node", (), (), n.intra) if n.transport != "unknown" else n
            for n in per_node
        )
    elif not transports:
        run = "unknown"
    elif len(transports) == 1:
        run = next(iter(transports))
    else:
        run = "mixed"
    return Fabric(run, per_node, socket_warnings(per_node, expected_hcas or {}))


def socket_warnings(
    nodes: Sequence[NodeFabric], expected_hcas: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """One warning per node that the cluster file gives IB HCAs but whose ranks used sockets
    (a single node is `intra-node`: nothing crossed the network)."""
    out = []
    for node in nodes:
        hcas = list(expected_hcas.get(node.node, ()))
        if hcas and node.transport == "socket":
            over = ", ".join(_short(d) for d in node.devices) or "an interface"
            out.append(
                f"node {node.node}: ranks talked over TCP sockets ({over}), not InfiniBand, "
                f"although the cluster file names ib_hcas {','.join(hcas)} (check the HCA "
                "ports, NCCL_IB_HCA and that the runtime's NCCL finds libibverbs)"
            )
    return tuple(out)
