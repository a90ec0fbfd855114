"""Cluster file (TOML) -> ClusterSpec. Validation only: every error names the file, the key and
the fix. Without a file the embedded default is this machine alone with a SQLite store."""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.health_settings import parse_health_table
from orchestrator.image_settings import parse_image_table
from orchestrator.pathnames import SAFE_NAME_WORDS, is_safe_name
from orchestrator.readings_settings import parse_readings
from orchestrator.slurm_settings import parse_slurm_table
from orchestrator.specs import (
    DEFAULT_FOLLOWER_GRACE_S,
    MIN_FOLLOWER_GRACE_S,
    CaseSettings,
    ClusterSpec,
    NodeSpec,
    SshSettings,
    default_workdir,
)
from orchestrator.states import BACKENDS, RUNTIMES
from orchestrator.tables import REQUIRED, Dialect, Table, Words, control_character

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CLUSTER_FILE = "cluster.toml"
DEFAULT_STORE_URL = "sqlite:///orchestrator.db"

_TOP_KEYS = {
    "cluster",
    "store",
    "ssh",
    "case",
    "node_defaults",
    "nodes",
    "image",
    "slurm",
    "health",
    "stragglers",  # orchestrator/readings_settings.py
    "energy",
}
_CLUSTER_KEYS = {
    "name",
    "vendor",
    "runtime",
    "backend",
    "master_port",
    "master_addr",
    "follower_grace_s",
}
_SSH_KEYS = {
    "user",
    "port",
    "key_file",
    "known_hosts",
    "accept_new_host_keys",
    "jump_host",
    "connect_timeout_s",
    "command_timeout_s",
    "keepalive_s",
}
_NODE_KEYS = {
    "name",
    "address",
    "port",
    "user",
    "key_file",
    "accelerators",
    "ib_hcas",
    "socket_ifname",
    "python",
    "workdir",
    "docker_host",
    "visible_devices",
}
_NODE_DEFAULT_KEYS = _NODE_KEYS - {"name", "address"}
_STORE_KEYS = {"url", "read_url"}
_CASE_KEYS = {"data_dir", "backbone_weights", "config", "hparams"}
CLUSTER = Dialect()  # the reader's own words are the cluster file's


def _expand(path: str | None) -> str | None:
    return None if path is None else os.path.expanduser(path)


def _node(
    source: str, index: int, table: object, defaults: Table, ssh: Table, ssh_port: int
) -> NodeSpec:
    own = Table(
        table,
        source,
        CLUSTER,
        f"nodes[{index}]",
        _NODE_KEYS,
        not_table=Words("{source}: {key} must be a table", "write each node as [[nodes]]"),
    )
    r = Table({**defaults.data, **own.data}, source, CLUSTER, own.where)
    name = r.string("name", REQUIRED)
    if not is_safe_name(name):  # it names files and folders of the run folder
        r.fail("name", f"{name!r} is not a safe name ({SAFE_NAME_WORDS})", 'e.g. name = "node-01"')
    user = r.string("user", ssh.get("user"))
    return NodeSpec(
        name=name,
        address=r.string("address", REQUIRED),
        port=r.integer("port", ssh_port, low=1, high=65535),
        user=user,
        key_file=_expand(r.string("key_file", ssh.get("key_file"))),
        accelerators=r.integer("accelerators", 1, low=1, high=1024),
        ib_hcas=r.strings("ib_hcas"),
        socket_ifname=r.string("socket_ifname"),
        python=r.string("python", "python3"),
        workdir=r.string("workdir", default_workdir(user or getpass.getuser())),
        docker_host=r.string("docker_host"),
        visible_devices=_devices(r),
    )


def _devices(r: Table) -> tuple[int, ...] | None:
    """visible_devices = [2, 3]: the accelerators this node's runs use, in local-rank order."""
    value = r.get("visible_devices")
    if value is None:
        return None
    indices = isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )
    if not isinstance(value, list) or not indices or not value or len(set(value)) < len(value):
        r.fail(
            "visible_devices",
            f"must be a non-empty list of distinct device indices, got {value!r}",
            "e.g. visible_devices = [2, 3] (nvidia-smi's / mx-smi's numbering)",
        )
    return tuple(value)


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")


def _master_addr(cl: Table, backend: str) -> str | None:
    """[cluster] master_addr: node 0's address as the other nodes reach it (an IP address or
    a host name); only the ssh backend chooses node 0 itself."""
    value = cl.string("master_addr")
    if value is None:
        return None
    if backend == "slurm":
        cl.fail(
            "master_addr",
            "is not used by the slurm backend (node 0 is the allocation's first node)",
            "remove master_addr; the batch script takes that node's NodeAddr",
        )
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if value == "local" or not _HOST.match(value):
        cl.fail(
            "master_addr",
            f"{value!r} is neither an IP address nor a host name",
            'e.g. master_addr = "10.0.0.1", node 0\'s address as the other nodes reach it',
        )
    return value


def parse_cluster(data: Mapping[str, Any], source: str) -> ClusterSpec:
    """Validate a parsed cluster file into a ClusterSpec."""
    top = Table(data, source, CLUSTER, keys=_TOP_KEYS)
    cl = top.table("cluster", _CLUSTER_KEYS)
    store = top.table("store", _STORE_KEYS)
    ssh_t = top.table("ssh", _SSH_KEYS)
    case = top.table("case", _CASE_KEYS)
    node_defaults = top.table("node_defaults", _NODE_DEFAULT_KEYS)
    ssh_port = ssh_t.integer("port", 22, low=1, high=65535)
    ssh = SshSettings(
        known_hosts=tuple(_expand(p) or p for p in ssh_t.strings("known_hosts")),
        accept_new_host_keys=ssh_t.boolean("accept_new_host_keys", False),
        jump_host=ssh_t.string("jump_host"),
        connect_timeout_s=ssh_t.number("connect_timeout_s", 10.0),
        command_timeout_s=ssh_t.number("command_timeout_s", 120.0),
        keepalive_s=ssh_t.integer("keepalive_s", 15, low=0, high=3600),
    )
    backend = cl.choice("backend", "ssh", BACKENDS)
    raw_nodes = data.get("nodes")
    if backend == "slurm" and raw_nodes is None:
        raw_nodes = []  # Slurm chooses the nodes; a node list is optional
    elif not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError(
            f"{source}: nodes is missing or empty",
            "add at least one [[nodes]] table with name and address",
        )
    nodes = tuple(
        _node(source, i, t, node_defaults, ssh_t, ssh_port) for i, t in enumerate(raw_nodes)
    )
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if node.name in seen:
            raise ConfigError(
                f"{source}: nodes[{i}].name {node.name!r} is used twice",
                "give every node its own name",
            )
        seen.add(node.name)
    hparams = case.get("hparams", {})
    if not isinstance(hparams, Mapping):
        case.fail("hparams", "must be a table", "write it as [case.hparams] with key = value lines")
    for key, value in hparams.items():  # they reach the workload's command line
        found = control_character(f"{key}{value}")
        if found is not None:
            case.fail(
                f"hparams.{key}",
                f"holds the control character {found}",
                "write it on one line, without newlines, tabs or other control characters",
            )
    image = parse_image_table(data["image"], source) if "image" in data else None
    slurm = None
    if "slurm" in data or backend == "slurm":
        slurm = parse_slurm_table(data.get("slurm", {}), source)
    health = parse_health_table(data.get("health", {}), source, [n.name for n in nodes])
    return ClusterSpec(
        name=cl.string("name", Path(source).stem),
        vendor=cl.string("vendor", "cpu"),
        nodes=nodes,
        ssh=ssh,
        store_url=store.string("url"),
        store_read_url=store.string("read_url"),
        case=CaseSettings(
            data_dir=case.string("data_dir", CaseSettings.data_dir),
            backbone_weights=case.string("backbone_weights", "none"),
            config_name=case.string("config"),
            hparams={str(k): str(v) for k, v in hparams.items()},
        ),
        runtime=cl.choice("runtime", "host", RUNTIMES),
        backend=backend,
        master_port=cl.integer("master_port", 29500, low=1024, high=65535),
        master_addr=_master_addr(cl, backend),
        follower_grace_s=_grace(cl),
        image=image,
        slurm=slurm,
        health=health,
        readings=parse_readings(data, source),
        source=source,
    )


def _grace(cl: Table) -> float:
    """[cluster] follower_grace_s: how long a run may go without a follower (submit, worker,
    attach) before its nodes stop it by themselves."""
    grace = cl.number("follower_grace_s", DEFAULT_FOLLOWER_GRACE_S)
    if grace < MIN_FOLLOWER_GRACE_S:
        cl.fail(
            "follower_grace_s",
            f"must be at least {MIN_FOLLOWER_GRACE_S:g} seconds, got {grace:g}",
            f"e.g. follower_grace_s = {DEFAULT_FOLLOWER_GRACE_S:g}",
        )
    return grace


def embedded_default() -> ClusterSpec:
    """This machine as the only node (no SSH), CPU 'accelerators', SQLite in the working dir."""
    return ClusterSpec(
        name="local",
        vendor="cpu",
        nodes=(
            NodeSpec(
                name="localhost",
                address="local",
                accelerators=max(1, os.cpu_count() or 1),
                python=sys.executable,
                workdir=str(Path.home() / ".cache" / "orchestrator"),
            ),
        ),
        case=CaseSettings(data_dir=str(Path("data/coco-synth").absolute())),
        source="<embedded default>",
    )


def load_cluster(path: str | None) -> ClusterSpec:
    """The cluster file named, else ./cluster.toml if present, else the embedded default."""
    if path is None:
        if not Path(DEFAULT_CLUSTER_FILE).is_file():
            return embedded_default()
        path = DEFAULT_CLUSTER_FILE
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"cluster file {path} does not exist", "check --cluster / $ORCHESTRATOR_CLUSTER"
        )
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid TOML ({exc})", "fix the syntax at the position shown"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read cluster file {path}: {exc}", "check the path and permissions"
        ) from None
    return parse_cluster(data, str(path))


def resolve_read_url(read_url: str | None, cli_url: str | None, cluster: ClusterSpec) -> str:
    """For `query` and `serve`: --read-db / $ORCHESTRATOR_READ_DB, then --db / $ORCHESTRATOR_DB
    (a URL named on the command line is the one meant), then the cluster file's store.read_url,
    then the store URL as for every command."""
    if read_url:
        return read_url
    if not cli_url and cluster.store_read_url:
        return cluster.store_read_url
    return resolve_store_url(cli_url, cluster)


def resolve_store_url(cli_url: str | None, cluster: ClusterSpec | None) -> str:
    """--db / $ORCHESTRATOR_DB (click merges both), then the cluster file, then SQLite here."""
    if cli_url:
        return cli_url
    if cluster is not None and cluster.store_url:
        return cluster.store_url
    # The default file in the working directory, named absolutely once (`cluster show` and
    # every message say where it is).
    return f"sqlite:///{Path(DEFAULT_STORE_URL.removeprefix('sqlite:///')).absolute()}"
