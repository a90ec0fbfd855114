"""Cluster file (TOML) -> ClusterSpec. Validation only: every error names the file, the key and
the fix. Without a file the embedded default is this machine alone with a SQLite store."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from orchestrator.errors import ConfigError
from orchestrator.specs import (
    DEFAULT_FOLLOWER_GRACE_S,
    MIN_FOLLOWER_GRACE_S,
    CaseSettings,
    ClusterSpec,
    NodeSpec,
    SshSettings,
)
from orchestrator.states import BACKENDS, RUNTIMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CLUSTER_FILE = "cluster.toml"
DEFAULT_STORE_URL = "sqlite:///orchestrator.db"
_Choice = TypeVar("_Choice", bound=str)

_TOP_KEYS = {"cluster", "store", "ssh", "case", "node_defaults", "nodes", "image", "slurm"}
_CLUSTER_KEYS = {"name", "vendor", "runtime", "backend", "master_port", "follower_grace_s"}
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
}
_NODE_DEFAULT_KEYS = _NODE_KEYS - {"name", "address"}
_CASE_KEYS = {"data_dir", "backbone_weights", "config", "hparams"}


class _Reader:
    """Typed access to one TOML table, with errors that say where and how to fix."""

    def __init__(self, source: str, path: str, table: Any, allowed: set[str]) -> None:
        self.source, self.path = source, path
        if not isinstance(table, Mapping):
            self.fail(path, "must be a table", f"write it as [{path}]")
        self.table: Mapping[str, Any] = table
        unknown = sorted(set(table) - allowed)
        if unknown:
            where = f"{path}.{unknown[0]}" if path else unknown[0]
            self.fail(where, "is not a known key", f"known keys here: {', '.join(sorted(allowed))}")

    def fail(self, key: str, problem: str, remedy: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {key} {problem}", remedy)

    def _key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def text(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.table.get(name, default)
        if value is None:
            if required:
                self.fail(self._key(name), "is missing", f'add {name} = "..."')
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(
                self._key(name),
                f"must be a non-empty string, got {value!r}",
                f'e.g. {name} = "..."',
            )
        return value.strip()

    def integer(self, name: str, default: int, low: int = 1, high: int = 1 << 31) -> int:
        value = self.table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(
                self._key(name),
                f"must be an integer between {low} and {high}, got {value!r}",
                f"e.g. {name} = {default}",
            )
        return int(value)

    def number(self, name: str, default: float) -> float:
        value = self.table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self.fail(
                self._key(name),
                f"must be a positive number, got {value!r}",
                f"e.g. {name} = {default}",
            )
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.table.get(name, default)
        if not isinstance(value, bool):
            self.fail(
                self._key(name),
                f"must be true or false, got {value!r}",
                f"e.g. {name} = {str(default).lower()}",
            )
        return bool(value)

    def text_list(self, name: str) -> tuple[str, ...]:
        value = self.table.get(name, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(
                self._key(name),
                f"must be a list of strings, got {value!r}",
                f'e.g. {name} = ["a", "b"]',
            )
        return tuple(value)

    def choice(self, name: str, choices: tuple[_Choice, ...], default: _Choice) -> _Choice:
        value = self.text(name, default)
        for choice in choices:  # the tuple's own item: its Literal type goes with it
            if value == choice:
                return choice
        self.fail(
            self._key(name),
            f"must be one of {', '.join(choices)}, got {value!r}",
            f'e.g. {name} = "{default}"',
        )


def _expand(path: str | None) -> str | None:
    return None if path is None else os.path.expanduser(path)


def _node(
    source: str, index: int, table: Any, defaults: Mapping[str, Any], ssh: Mapping[str, Any]
) -> NodeSpec:
    merged = {**defaults, **(table if isinstance(table, Mapping) else {})}
    if not isinstance(table, Mapping):
        raise ConfigError(
            f"{source}: nodes[{index}] must be a table", "write each node as [[nodes]]"
        )
    r = _Reader(source, f"nodes[{index}]", merged, _NODE_KEYS)
    name = r.text("name", required=True)
    address = r.text("address", required=True)
    assert name is not None and address is not None
    return NodeSpec(
        name=name,
        address=address,
        port=r.integer("port", int(ssh.get("port", 22)), 1, 65535),
        user=r.text("user", ssh.get("user")),
        key_file=_expand(r.text("key_file", ssh.get("key_file"))),
        accelerators=r.integer("accelerators", 1, 1, 1024),
        ib_hcas=r.text_list("ib_hcas"),
        socket_ifname=r.text("socket_ifname"),
        python=r.text("python", "python3") or "python3",
        workdir=r.text("workdir", "/tmp/orchestrator") or "/tmp/orchestrator",
        docker_host=r.text("docker_host"),
    )


def parse_cluster(data: Mapping[str, Any], source: str) -> ClusterSpec:
    """Validate a parsed cluster file into a ClusterSpec."""
    top = _Reader(source, "", data, _TOP_KEYS)
    cl = _Reader(source, "cluster", data.get("cluster", {}), _CLUSTER_KEYS)
    store = _Reader(source, "store", data.get("store", {}), {"url"})
    ssh_t = _Reader(source, "ssh", data.get("ssh", {}), _SSH_KEYS)
    case = _Reader(source, "case", data.get("case", {}), _CASE_KEYS)
    node_defaults = _Reader(
        source, "node_defaults", data.get("node_defaults", {}), _NODE_DEFAULT_KEYS
    )
    del top
    if ssh_t.table.get("port") is not None:
        ssh_t.integer("port", 22, 1, 65535)
    ssh = SshSettings(
        known_hosts=tuple(_expand(p) or p for p in ssh_t.text_list("known_hosts")),
        accept_new_host_keys=ssh_t.flag("accept_new_host_keys", False),
        jump_host=ssh_t.text("jump_host"),
        connect_timeout_s=ssh_t.number("connect_timeout_s", 10.0),
        command_timeout_s=ssh_t.number("command_timeout_s", 120.0),
        keepalive_s=ssh_t.integer("keepalive_s", 15, 0, 3600),
    )
    backend = cl.choice("backend", BACKENDS, "ssh")
    raw_nodes = data.get("nodes")
    if backend == "slurm" and raw_nodes is None:
        raw_nodes = []  # Slurm chooses the nodes; a node list is optional
    elif not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError(
            f"{source}: nodes is missing or empty",
            "add at least one [[nodes]] table with name and address",
        )
    nodes = tuple(
        _node(source, i, t, node_defaults.table, ssh_t.table) for i, t in enumerate(raw_nodes)
    )
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if node.name in seen:
            raise ConfigError(
                f"{source}: nodes[{i}].name {node.name!r} is used twice",
                "give every node its own name",
            )
        seen.add(node.name)
    hparams_raw = case.table.get("hparams", {})
    if not isinstance(hparams_raw, Mapping):
        case.fail(
            "case.hparams", "must be a table", "write it as [case.hparams] with key = value lines"
        )
    image = None
    if "image" in data:
        from orchestrator.images.workflow import parse_image_table

        image = parse_image_table(data["image"], source)
    slurm = None
    if "slurm" in data or backend == "slurm":
        from orchestrator.backends.slurm.settings import parse_slurm_table

        slurm = parse_slurm_table(data.get("slurm", {}), source)
    return ClusterSpec(
        name=cl.text("name", Path(source).stem) or "cluster",
        vendor=cl.text("vendor", "cpu") or "cpu",
        nodes=nodes,
        ssh=ssh,
        store_url=store.text("url"),
        case=CaseSettings(
            data_dir=case.text("data_dir", CaseSettings.data_dir) or CaseSettings.data_dir,
            backbone_weights=case.text("backbone_weights", "none") or "none",
            config_name=case.text("config"),
            hparams={str(k): str(v) for k, v in hparams_raw.items()},
        ),
        runtime=cl.choice("runtime", RUNTIMES, "host"),
        backend=backend,
        master_port=cl.integer("master_port", 29500, 1024, 65535),
        follower_grace_s=_grace(cl),
        image=image,
        slurm=slurm,
        source=source,
    )


def _grace(cl: _Reader) -> float:
    """[cluster] follower_grace_s: how long a run may go without a follower (submit, worker,
    attach) before its nodes stop it by themselves."""
    grace = cl.number("follower_grace_s", DEFAULT_FOLLOWER_GRACE_S)
    if grace < MIN_FOLLOWER_GRACE_S:
        cl.fail(
            "cluster.follower_grace_s",
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


def resolve_store_url(cli_url: str | None, cluster: ClusterSpec | None) -> str:
    """--db / $ORCHESTRATOR_DB (click merges both), then the cluster file, then SQLite here."""
    if cli_url:
        return cli_url
    if cluster is not None and cluster.store_url:
        return cluster.store_url
    # The default file in the working directory, named absolutely once (`cluster show` and
    # every message say where it is).
    return f"sqlite:///{Path(DEFAULT_STORE_URL.removeprefix('sqlite:///')).absolute()}"
