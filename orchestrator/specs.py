"""Pure data: what the cluster is and what a job asks for. No I/O here."""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from orchestrator.errors import TopologyError
from orchestrator.health_settings import HealthSettings
from orchestrator.image_settings import ImageSettings
from orchestrator.readings_settings import ReadingSettings
from orchestrator.slurm_settings import SlurmSettings
from orchestrator.states import BackendName, Precision, Runtime

_TOPOLOGY = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Topology:
    """`NxM`: N nodes, M processes (accelerators) per node."""

    nnodes: int
    nproc_per_node: int

    @classmethod
    def parse(cls, text: str) -> Topology:
        match = _TOPOLOGY.match(text or "")
        if not match:
            raise TopologyError(
                f"topology {text!r} is not of the form NxM",
                "write nodes x processes per node, e.g. 1x1, 1x8 or 2x8",
            )
        nnodes, nproc = int(match.group(1)), int(match.group(2))
        if nnodes < 1 or nproc < 1:
            raise TopologyError(
                f"topology {text!r} asks for zero nodes or processes",
                "both numbers must be at least 1, e.g. 2x8",
            )
        if nnodes > 4096 or nproc > 256:
            raise TopologyError(f"topology {text!r} is implausibly large", "check the numbers")
        return cls(nnodes, nproc)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def __str__(self) -> str:
        return f"{self.nnodes}x{self.nproc_per_node}"


def default_workdir(user: str) -> str:
    """A node's workdir unless the cluster file names one: the login user's own folder in
    /var/tmp (kept across reboots). /var/tmp is sticky, so once made (0700, by preflight) no
    one else can rename or fill it; one someone else made first is refused by preflight."""
    return f"/var/tmp/orchestrator-{user}"


@dataclass(frozen=True)
class NodeSpec:
    """One machine of the cluster. `address` 'local' means: run here without SSH."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    accelerators: int = 1
    ib_hcas: tuple[str, ...] = ()  # e.g. ("mlx5_0", "mlx5_1") -> NCCL_IB_HCA
    socket_ifname: str | None = None  # NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME
    python: str = "python3"  # interpreter with torch for the host runtime
    workdir: str = ""  # where run folders live on the node; "": default_workdir(login user)
    docker_host: str | None = None  # the node's Docker daemon socket, when not the default
    visible_devices: tuple[int, ...] | None = None  # the devices runs use, by local rank

    def __post_init__(self) -> None:
        if not self.workdir:
            object.__setattr__(self, "workdir", default_workdir(self.user or getpass.getuser()))

    @property
    def is_local(self) -> bool:
        return self.address == "local"


@dataclass(frozen=True)
class SshSettings:
    known_hosts: tuple[str, ...] = ()  # extra known_hosts files besides ~/.ssh/known_hosts
    accept_new_host_keys: bool = False  # explicit, recorded choice
    jump_host: str | None = None  # [user@]host[:port]
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 120.0
    keepalive_s: int = 15


@dataclass(frozen=True)
class CaseSettings:
    """Where the Faster R-CNN case finds its inputs on the nodes."""

    data_dir: str = "./data/coco-synth"
    backbone_weights: str = "none"  # a .pth path, or 'none' to train from scratch
    config_name: str | None = None  # vendor/topology override set, e.g. 'metax-c500:2x8'
    hparams: dict[str, str] = field(default_factory=dict)  # defaults for every submit


#: How long a running run may go without a follower before its nodes stop it by themselves
#: (and the store marks it lost): room for a worker or `orchestrator attach` to adopt it.
DEFAULT_FOLLOWER_GRACE_S = 180.0
MIN_FOLLOWER_GRACE_S = 6.0


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    vendor: str
    nodes: tuple[NodeSpec, ...]
    ssh: SshSettings = SshSettings()
    store_url: str | None = None
    store_read_url: str | None = None  # a SELECT-only role's URL, for `query` and `serve`
    case: CaseSettings = CaseSettings()
    runtime: Runtime = "host"  # 'host' (python on the node) or 'docker'
    backend: BackendName = "ssh"  # 'ssh' (our own launcher) or 'slurm'
    master_port: int = 29500
    master_addr: str | None = None  # node 0's address as the other nodes reach it
    follower_grace_s: float = 180.0  # DEFAULT_FOLLOWER_GRACE_S: a run with no follower ends then
    image: ImageSettings | None = None  # the [image] table
    slurm: SlurmSettings | None = None  # the [slurm] table
    health: HealthSettings = HealthSettings()  # the [health] table: the gate before runs
    readings: ReadingSettings = ReadingSettings()  # [stragglers] and [energy]
    source: str = "<embedded default>"  # the file it came from, for messages

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise TopologyError(f"no node named {name!r} in {self.source}", f"known nodes: {known}")


@dataclass(frozen=True)
class JobSpec:
    """One benchmark run as asked for: pure data, turned into a Plan by orchestrator.plan."""

    run_id: str
    cluster: ClusterSpec
    topology: Topology
    nodes: tuple[NodeSpec, ...]  # the chosen nodes, node rank = index
    precision: Precision = "fp32"
    hparams: dict[str, str] = field(default_factory=dict)  # --set key=value, as strings
    case: str = "faster_rcnn"
    timeout_s: float | None = None
    no_progress_timeout_s: float | None = None
    submitted_by: str = ""

    def run_dir_on(self, node: NodeSpec) -> PurePosixPath:
        return PurePosixPath(node.workdir) / "runs" / self.run_id


def pick_nodes(
    cluster: ClusterSpec, topology: Topology, names: list[str] | None = None
) -> tuple[NodeSpec, ...]:
    """Choose the nodes for a topology: the named ones, or the first that fit."""
    if names:
        chosen = [cluster.node(n) for n in names]
        if len(set(names)) != len(names):
            raise TopologyError("a node is named twice in --nodes", "name each node once")
        if len(chosen) != topology.nnodes:
            raise TopologyError(
                f"topology {topology} needs {topology.nnodes} node(s) but --nodes names {len(chosen)}",
                "name exactly as many nodes as the topology's first number",
            )
    else:
        if topology.nnodes > len(cluster.nodes):
            raise TopologyError(
                f"topology {topology} needs {topology.nnodes} nodes but cluster "
                f"{cluster.name!r} has {len(cluster.nodes)}",
                _add_nodes_hint(cluster),
            )
        chosen = list(cluster.nodes[: topology.nnodes])
    for node in chosen:
        if topology.nproc_per_node > node.accelerators:
            raise TopologyError(
                f"topology {topology} needs {topology.nproc_per_node} processes per node but node "
                f"{node.name!r} has {node.accelerators} accelerator(s)",
                f"ask for at most {node.accelerators} per node, or fix accelerators in {cluster.source}",
            )
    return tuple(chosen)


def _add_nodes_hint(cluster: ClusterSpec) -> str:
    if cluster.source.startswith("<"):  # no cluster file: the embedded default
        return (
            "describe the nodes in a cluster file (docs/cluster-file.md) and pass --cluster FILE,"
            " or ask for fewer"
        )
    return f"add nodes to {cluster.source} or ask for fewer"


def with_inputs(
    cluster: ClusterSpec, data_dir: str | None, backbone_weights: str | None
) -> ClusterSpec:
    """The cluster with one run's dataset and backbone weights (submit --data-dir /
    --backbone-weights) instead of its [case] values."""
    if data_dir is None and backbone_weights is None:
        return cluster
    case = replace(
        cluster.case,
        data_dir=data_dir or cluster.case.data_dir,
        backbone_weights=backbone_weights or cluster.case.backbone_weights,
    )
    return replace(cluster, case=case)
