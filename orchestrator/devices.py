"""Which accelerators a node's ranks use. Pure.

Local rank i of a node runs on device `indices[i]`, numbered as the vendor's SMI tool numbers
them (nvidia-smi's and mx-smi's index, i.e. PCI bus order): the launcher sets the visible-devices
variable to that list, plus CUDA_DEVICE_ORDER=PCI_BUS_ID where the runtime would otherwise number
devices its own way (fastest first), and the monitors keep the same indices. docs/monitors.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.errors import ConfigError
from orchestrator.specs import NodeSpec

#: visible-devices variable -> the variable and value that make its indices the SMI tool's.
DEVICE_ORDER: Mapping[str, tuple[str, str]] = {
    "CUDA_VISIBLE_DEVICES": ("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),
}


@dataclass(frozen=True)
class Devices:
    """The devices of one node's ranks, in local-rank order, and where that list came from."""

    indices: tuple[int, ...]
    source: str

    def of_rank(self, local_rank: int) -> int:
        return self.indices[local_rank]

    def rank_of(self, device: int) -> int | None:
        """The local rank on `device` (a monitor's index), or None: not one of the run's."""
        return self.indices.index(device) if device in self.indices else None

    def env_value(self) -> str:
        return ",".join(str(i) for i in self.indices)


def parse_indices(text: str) -> tuple[int, ...] | None:
    """`2,3` -> (2, 3); "" -> (); None for what is not a list of distinct indices (UUIDs,
    MIG names, "-1"): the monitors could not tell which devices those are."""
    items = [item.strip() for item in text.split(",")] if text.strip() else []
    if not all(item.isdigit() for item in items):
        return None
    indices = tuple(int(item) for item in items)
    return indices if len(set(indices)) == len(indices) else None


def choose_devices(
    node: NodeSpec, nproc: int, var: str, node_value: str | None, source_file: str
) -> Devices:
    """The node's `visible_devices` from the cluster file, else the list the node's own
    environment sets in `var` (an admin's CUDA_VISIBLE_DEVICES, host runtime), else devices
    0..nproc-1. A list is used in its order, its first nproc entries; fewer than nproc, or
    something other than indices, is refused in one line."""
    if node.visible_devices:
        listed = node.visible_devices
        source = f"visible_devices of node {node.name} in {source_file}"
        fix = f"list at least {nproc} devices in visible_devices, or ask for fewer per node"
    elif node_value is not None:
        parsed = parse_indices(node_value)
        source = f"{var} of node {node.name}'s environment"
        fix = (
            f"set {var} on the node to at least {nproc} device indices, or set visible_devices "
            f"for node {node.name} in {source_file}"
        )
        if parsed is None:
            raise ConfigError(
                f"{var}={node_value!r} on node {node.name} is not a list of device indices", fix
            )
        listed = parsed
    else:
        return Devices(tuple(range(nproc)), f"default: the first {nproc}")
    if len(listed) < nproc:
        raise ConfigError(
            f"{source} lists {len(listed)} device(s) ({','.join(map(str, listed)) or 'none'}) "
            f"but the topology runs {nproc} processes per node",
            fix,
        )
    return Devices(listed[:nproc], source)


def device_ranks(devices: Devices | Sequence[int]) -> dict[int, int]:
    """{monitor device index: local rank} for a node's devices."""
    indices = devices.indices if isinstance(devices, Devices) else tuple(devices)
    return {device: rank for rank, device in enumerate(indices)}
