"""Which of a profile's runtime options one node's `docker run` gets, and why. Pure.

A profile names devices it NEEDS (`devices`: a node without one is refused at preflight) and
devices it uses WHERE PRESENT (`optional_devices`: left out of the `docker run` of a node that
lacks them, since docker refuses a `--device` that does not exist). InfiniBand devices (under
/dev/infiniband) become needed on a node whose cluster entry names `ib_hcas`: the admin said the
node has IB, so its absence is a fault, not a choice. `rdma_ulimits` (memlock=-1) go with IB.

The facts come from the node probe (`env["devices"]`: path -> exists); without them (a dry run)
the optional devices that no `ib_hcas` decides are shown as "decided at preflight".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from orchestrator.images.profiles import RuntimeOptions, VendorProfile, is_ib_device
from orchestrator.specs import NodeSpec


@dataclass(frozen=True)
class Choice:
    """One runtime option of a node's `docker run`: used or left out, and why."""

    option: str  # e.g. "--device /dev/infiniband"
    used: bool
    why: str

    def line(self) -> str:
        return f"{self.option}: {self.why}"


@dataclass(frozen=True)
class NodeRuntime:
    """A node's runtime options: `options` holds only what its `docker run` gets (optional
    devices and RDMA ulimits already resolved), `choices` says why."""

    options: RuntimeOptions
    choices: tuple[Choice, ...]

    def lines(self) -> tuple[str, ...]:
        return tuple(c.line() for c in self.choices)


@dataclass(frozen=True)
class NeededDevice:
    """A device preflight requires on a node, with the remedy its absence gets."""

    path: str
    remedy: str


def needed_devices(profile: VendorProfile, ib_hcas: Sequence[str]) -> tuple[NeededDevice, ...]:
    """What preflight refuses a node without: the profile's devices, plus its IB devices on a
    node whose cluster entry names ib_hcas."""
    runtime = profile.runtime
    needed = [
        NeededDevice(
            path,
            f"profile {profile.name} needs it: install the vendor's driver, or move it to "
            "optional_devices in the profile if runs can go without it",
        )
        for path in runtime.devices
    ]
    if ib_hcas:
        needed += [
            NeededDevice(
                path,
                f"the cluster names ib_hcas {','.join(ib_hcas)} for this node: load the "
                "InfiniBand drivers (rdma-core, ib_uverbs), or remove ib_hcas from the node",
            )
            for path in runtime.optional_devices
            if is_ib_device(path)
        ]
    return tuple(needed)


def choose_runtime(
    runtime: RuntimeOptions, node: NodeSpec, present: Mapping[str, bool] | None
) -> NodeRuntime:
    """The options of `node`'s `docker run`. `present`: the probe's device facts (path ->
    exists) for this node, or None before any probe (a dry run)."""
    choices = [
        Choice(f"--device {d}", True, "needed: preflight refuses a node without it")
        for d in runtime.devices
    ]
    used: list[str] = []
    for device in runtime.optional_devices:
        choice = _optional(device, node, present)
        choices.append(choice)
        if choice.used:
            used.append(device)
    rdma = any(is_ib_device(d) for d in [*runtime.devices, *used])
    for limit in runtime.ulimits:
        choices.append(Choice(f"--ulimit {limit}", True, "always (the daemon must accept it)"))
    # Before any probe, an optional IB device may still turn up on the node.
    undecided = present is None and any(is_ib_device(d) for d in runtime.optional_devices)
    for limit in runtime.rdma_ulimits:
        if rdma:
            why = "with RDMA: an InfiniBand device is used"
        elif undecided:
            why = "with RDMA only: used where preflight finds an InfiniBand device"
        else:
            why = "left out: no InfiniBand device is used on this node"
        choices.append(Choice(f"--ulimit {limit}", rdma, why))
    if runtime.gpus:
        choices.append(Choice(f"--gpus {runtime.gpus}", True, "needed (NVIDIA Container Toolkit)"))
    options = replace(
        runtime,
        devices=(*runtime.devices, *used),
        optional_devices=(),
        ulimits=(*runtime.ulimits, *(runtime.rdma_ulimits if rdma else ())),
        rdma_ulimits=(),
    )
    return NodeRuntime(options, tuple(choices))


def _optional(device: str, node: NodeSpec, present: Mapping[str, bool] | None) -> Choice:
    option = f"--device {device}"
    if is_ib_device(device) and node.ib_hcas:
        hcas = ",".join(node.ib_hcas)
        return Choice(option, True, f"optional, used: the cluster names ib_hcas {hcas} (needed)")
    if present is None:
        return Choice(option, False, "optional, used when present (preflight looks on the node)")
    if present.get(device):
        return Choice(option, True, "optional, used: present on the node")
    return Choice(option, False, "optional, left out: not on the node")


def probe_devices(profile: VendorProfile, ib_hcas: Sequence[str] = ()) -> dict[str, object]:
    """The node probe's `devices` argument: every path to look for, and the needed ones with
    the remedy of their absence."""
    runtime = profile.runtime
    return {
        "look": sorted({*runtime.devices, *runtime.optional_devices}),
        "needed": [[d.path, d.remedy] for d in needed_devices(profile, ib_hcas)],
    }
