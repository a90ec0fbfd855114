"""JobSpec -> Plan: per node, the exact torchrun command, its environment and where files go.

Pure: no I/O. `orchestrator submit --dry-run` prints `Plan.render()`; the launcher executes the
same Plan, so what is shown is what runs. A container runtime wraps each node's command through
`wrap` without changing anything else.
"""

from __future__ import annotations

import shlex
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import PurePosixPath

from orchestrator.clock import utcnow
from orchestrator.devices import DEVICE_ORDER, Devices, choose_devices
from orchestrator.errors import ConfigError
from orchestrator.pathnames import RUN_ID_PATTERN
from orchestrator.rendezvous import Master, master_address
from orchestrator.specs import ClusterSpec, JobSpec, NodeSpec, Topology
from orchestrator.states import PRECISIONS, Precision, Runtime
from orchestrator.tables import control_character

WORKLOAD_MODULE = "workload.faster_rcnn"
# Short names admins type (`--set bs=16`), mapped to the workload's hyper-parameter keys.
HPARAM_ALIASES = {"bs": "batch_size", "batch": "batch_size", "learning_rate": "lr"}
# Hyper-parameters that a run's own option sets (and its records show): a --set of one would
# train under a value the manifest does not say, and publishing would reject the run.
OPTION_OWNED = {"precision": "--precision (a campaign file: precisions = [...])"}


def new_run_id(now: datetime | None = None, salt: str = "") -> str:
    """Sortable and unique enough: UTC time plus a short hash."""
    now = now or utcnow()
    stamp = now.strftime("%Y%m%d-%H%M%S")
    tail = f"{zlib.crc32(f'{now.isoformat()}{salt}'.encode()) & 0xFFFFFF:06x}"
    return f"{stamp}-{tail}"


def parse_sets(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`--set key=value` options -> {key: value}, aliases resolved, last one wins."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ConfigError(
                f"--set {item!r} is not key=value", "write e.g. --set bs=16 --set lr=0.16"
            )
        if control_character(item) is not None:  # it reaches command lines and sbatch scripts
            raise ConfigError(f"--set {item!r} holds a control character", "write it on one line")
        result[HPARAM_ALIASES.get(key, key)] = value.strip()
    return result


def check_hparams(hparams: Mapping[str, str], precision: str = "fp32") -> None:
    """Refuse unknown keys (naming the closest known one), bad values and out-of-range ones
    (epochs >= 1, lr > 0, batch_size >= 1, min_size <= max_size, ...) here, before any node
    is touched: the workload's own resolution (pure Python) is the single definition of what
    it accepts. Checked over the reference defaults: the vendor sets change only batch size
    and learning rate, to valid values."""
    from workload.faster_rcnn import hparams as table
    from workload.faster_rcnn.errors import WorkloadError

    for key, value in hparams.items():
        if key in OPTION_OWNED:
            raise ConfigError(
                f"--set {key}={value}: {key} is not a hyper-parameter to --set",
                f"set it with {OPTION_OWNED[key]}",
            )
    try:
        for key, value in hparams.items():
            table.parse_value(key, value)
        sets = [f"{key}={value}" for key, value in hparams.items()]
        table.resolve(None, "1x1", {"precision": precision}, sets)
    except WorkloadError as exc:
        raise ConfigError(exc.message, exc.remedy) from None


@dataclass(frozen=True)
class NodePlan:
    node: NodeSpec
    node_rank: int
    run_dir: str  # on the node
    output_dir: str  # rank files land here
    log_path: str  # torchrun's stdout+stderr on the node
    env: tuple[tuple[str, str], ...]
    torchrun_argv: tuple[str, ...]
    argv: tuple[str, ...]  # what is spawned: torchrun, or its container wrapper
    workload_dir: str | None  # host runtime: where the workload source is staged
    # docker runtime: each vendor runtime option of this node, used or left out, and why
    runtime_notes: tuple[str, ...] = ()
    devices: Devices | None = None  # local rank i on device devices.indices[i] (SMI numbering)

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def shell_line(self) -> str:
        """The command as one quoted shell line, exactly as it is run."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return f"cd {shlex.quote(self.run_dir)} && env {env} {shlex.join(self.argv)}"


@dataclass(frozen=True)
class Plan:
    job: JobSpec
    master_addr: str
    master_port: int
    nodes: tuple[NodePlan, ...]
    runtime: Runtime
    image: str | None = None
    image_id: str | None = None
    notes: tuple[str, ...] = field(default=())
    hardware_label: str | None = None  # the vendor profile's label, e.g. 'MetaX C500 64G'
    monitor_tool: str | None = None  # the vendor's SMI tool, probed and later sampled
    master_source: str = ""  # why master_addr is that address (Master.source)
    visible_devices_var: str | None = None  # the profile's, e.g. CUDA_VISIBLE_DEVICES

    def render(self) -> str:
        job = self.job
        hp = " ".join(f"{k}={v}" for k, v in sorted(job.hparams.items())) or "(defaults)"
        lines = [
            f"run {job.run_id}: {job.case} on cluster {job.cluster.name} "
            f"(vendor {job.cluster.vendor}), topology {job.topology}, precision {job.precision}",
            f"runtime {self.runtime}" + (f", image {self.image}" if self.image else ""),
            f"rendezvous static, master {self.master_addr}:{self.master_port}"
            + (f" ({self.master_source})" if self.master_source else "")
            + f", world size {job.topology.world_size}",
            f"hparams {hp}",
            f"timeouts: overall {_secs(job.timeout_s)}, no progress {_secs(job.no_progress_timeout_s)}",
        ]
        lines += [f"note: {n}" for n in self.notes]
        for np_ in self.nodes:
            node = np_.node
            where = (
                "this machine"
                if node.is_local
                else f"{node.user or ''}{'@' if node.user else ''}{node.address}:{node.port}"
            )
            lines += [
                "",
                f"node {node.name} (node rank {np_.node_rank}, {where})",
                "  preflight: connect; probe python, torch, accelerators, dataset, weights, "
                "disk" + (f", IB {','.join(node.ib_hcas)} active" if node.ib_hcas else ""),
            ]
            if np_.workload_dir:
                lines.append(f"  stage:     workload source -> {np_.workload_dir}")
            if np_.devices:
                lines.append(f"  devices:   {_devices_line(np_.devices)}")
            lines += [
                f"  run dir:   {np_.run_dir}",
                f"  command:   {np_.shell_line()}",
                *(f"  runtime:   {note}" for note in np_.runtime_notes),
                f"  log:       {np_.log_path}",
                f"  collect:   {np_.output_dir}/rank-*.json, log",
            ]
        return "\n".join(lines) + "\n"


def _devices_line(devices: Devices) -> str:
    """Local rank i on the i-th device listed; the monitors sample the same devices."""
    last = len(devices.indices) - 1
    ranks = "local rank 0" if last == 0 else f"local ranks 0..{last}"
    return f"{ranks} on device(s) {devices.env_value()} ({devices.source})"


def _secs(value: float | None) -> str:
    return "none" if value is None else f"{value:g}s"


def workload_args(job: JobSpec, output_dir: str) -> list[str]:
    case = job.cluster.case
    args = [
        "--data-dir",
        case.data_dir,
        "--backbone-weights",
        case.backbone_weights,
        "--output-dir",
        output_dir,
        "--run-id",
        job.run_id,
        "--precision",
        job.precision,
    ]
    if case.config_name:
        args += ["--config", f"{case.config_name}:{job.topology}"]
    for key, value in sorted(job.hparams.items()):
        args += ["--set", f"{key}={value}"]
    return args


def workload_entry(job: JobSpec, output_dir: str) -> list[str]:
    return ["-m", WORKLOAD_MODULE, *workload_args(job, output_dir)]


def node_env(
    job: JobSpec,
    node: NodeSpec,
    vendor_env: Mapping[str, str],
    visible_devices_var: str | None,
    devices: Devices | None = None,
) -> dict[str, str]:
    # The run id and node name mark every process of the run on the node (backends/ssh/guard.py).
    env = {"ORCHESTRATOR_RUN_ID": job.run_id, "ORCHESTRATOR_NODE": node.name}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(vendor_env)
    if node.ib_hcas:
        env["NCCL_IB_HCA"] = ",".join(node.ib_hcas)
    if node.socket_ifname:
        env["NCCL_SOCKET_IFNAME"] = node.socket_ifname
        env["GLOO_SOCKET_IFNAME"] = node.socket_ifname
    if visible_devices_var:
        devices = devices or Devices(tuple(range(job.topology.nproc_per_node)), "")
        env[visible_devices_var] = devices.env_value()
        if visible_devices_var in DEVICE_ORDER:  # the runtime's numbering = the SMI tool's
            order_var, order = DEVICE_ORDER[visible_devices_var]
            env[order_var] = order
    return env


NCCL_LOG_DIR = "nccl"  # in the node's run dir: one file per rank process, collected per node


def nccl_log_env(run_dir: str) -> dict[str, str]:
    """NCCL's account of how ranks talk (network plugin, HCAs, each channel's path), one file
    per process (%h host, %p pid) beside the node log rather than in it: the node log and
    the live view stay the workload's. orchestrator/fabric.py reads them."""
    return {
        "NCCL_DEBUG": "INFO",
        "NCCL_DEBUG_SUBSYS": "INIT,NET",
        "NCCL_DEBUG_FILE": f"{run_dir}/{NCCL_LOG_DIR}/%h.%p.log",
    }


def build_plan(
    job: JobSpec,
    *,
    workload_hash: str,
    vendor_env: Mapping[str, str] | None = None,
    visible_devices_var: str | None = None,
    wrap: Callable[[NodePlan], tuple[str, ...]] | None = None,
    image: str | None = None,
    master: Master | None = None,
    node_values: Mapping[str, str | None] | None = None,
    entry: Callable[[JobSpec, str], Sequence[str]] | None = None,
) -> Plan:
    """The plan for every node. `wrap` turns a node's command into its container command;
    `master` is master_address(job, route) (without it: no route lookup); `node_values`: the
    visible-devices variable as each node's own environment sets it (host runtime); `entry`:
    what torchrun starts, given the job and the node's output folder (default: the workload
    with its arguments; the health probe gives its own)."""
    if job.precision not in PRECISIONS:
        raise ConfigError(
            f"precision {job.precision!r} is not known", f"use one of {', '.join(PRECISIONS)}"
        )
    topo = job.topology
    master = master or master_address(job)
    port = job.cluster.master_port
    runtime: Runtime = "docker" if wrap else "host"
    plans = []
    for rank, node in enumerate(job.nodes):
        run_dir = str(job.run_dir_on(node))
        output_dir = str(PurePosixPath(run_dir) / "ranks")
        workload_dir = (
            None if wrap else str(PurePosixPath(node.workdir) / "workload" / workload_hash)
        )
        devices = None
        if visible_devices_var:
            value = (node_values or {}).get(node.name)
            devices = choose_devices(
                node, topo.nproc_per_node, visible_devices_var, value, job.cluster.source
            )
        env = node_env(job, node, vendor_env or {}, visible_devices_var, devices)
        if visible_devices_var:  # an accelerator profile: NCCL; the vendor's own settings win
            env = {**nccl_log_env(run_dir), **env}
        if workload_dir:
            env["PYTHONPATH"] = workload_dir
        torchrun = (
            node.python,
            "-m",
            "torch.distributed.run",
            f"--nnodes={topo.nnodes}",
            f"--nproc-per-node={topo.nproc_per_node}",
            f"--node-rank={rank}",
            f"--master-addr={master.address}",
            f"--master-port={port}",
            "--max-restarts=0",
            *(entry or workload_entry)(job, output_dir),
        )
        np_ = NodePlan(
            node=node,
            node_rank=rank,
            run_dir=run_dir,
            output_dir=output_dir,
            log_path=str(PurePosixPath(run_dir) / "node.log"),
            env=tuple(sorted(env.items())),
            torchrun_argv=torchrun,
            argv=torchrun,
            workload_dir=workload_dir,
            devices=devices,
        )
        if wrap:
            np_ = replace(np_, argv=wrap(np_))
        plans.append(np_)
    return Plan(
        job=job,
        master_addr=master.address,
        master_port=port,
        master_source=master.source,
        nodes=tuple(plans),
        runtime=runtime,
        image=image,
    )


def make_job(
    cluster: ClusterSpec,
    topology: Topology,
    nodes: tuple[NodeSpec, ...],
    *,
    run_id: str,
    precision: Precision = "fp32",
    sets: dict[str, str] | None = None,
    timeout_s: float | None = None,
    no_progress_timeout_s: float | None = None,
    submitted_by: str = "",
) -> JobSpec:
    """Cluster defaults (case.hparams) overridden by the command line's --set."""
    if not RUN_ID_PATTERN.fullmatch(run_id):  # it names folders here, on nodes, in Slurm
        raise ConfigError(
            f"run id {run_id!r} is not 1-64 letters, digits, '.', '_' or '-'",
            "let orchestrator name the run",
        )
    hparams = {HPARAM_ALIASES.get(k, k): v for k, v in cluster.case.hparams.items()}
    hparams.update(sets or {})
    check_hparams(hparams, precision)
    return JobSpec(
        run_id=run_id,
        cluster=cluster,
        topology=topology,
        nodes=nodes,
        precision=precision,
        hparams=hparams,
        timeout_s=timeout_s,
        no_progress_timeout_s=no_progress_timeout_s,
        submitted_by=submitted_by,
    )
