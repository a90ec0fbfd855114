"""`orchestrator cluster ...`: what the tool understood of the cluster file."""

from __future__ import annotations

from typing import Any

import click

from orchestrator.cli.context import AppContext, runs_folder
from orchestrator.cli.output import Output, Section, emit, format_option


def register(cli: click.Group) -> None:
    cli.add_command(cluster)


@click.group()
def cluster() -> None:
    """Inspect the cluster description.

    Example: orchestrator --cluster lab.toml cluster show
    """


@cluster.command("show")
@format_option()
@click.pass_obj
def show(app: AppContext, output: str) -> None:
    """Print the cluster as understood: nodes, SSH, store, case settings (paths absolute).

    Example: orchestrator --cluster examples/cluster.toml cluster show --format json
    """
    emit(cluster_output(app), output)


def _store_shown(url: str) -> str:
    """The store URL without its password; a SQLite file as an absolute path."""
    from orchestrator.store import redact_url
    from orchestrator.store.engine import parse_url

    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        from pathlib import Path

        return f"sqlite:///{Path(parsed.database).absolute()}"
    return redact_url(parsed)


def cluster_document(app: AppContext) -> dict[str, Any]:
    spec = app.cluster
    ssh, case = spec.ssh, spec.case
    return {
        "name": spec.name,
        "source": spec.source,
        "vendor": spec.vendor,
        "runtime": spec.runtime,
        "backend": spec.backend,
        "master_port": spec.master_port,
        "master_addr": spec.master_addr,
        "follower_grace_s": spec.follower_grace_s,
        "store": _store_shown(app.store_url),
        "read_store": _store_shown(app.read_url),
        "runs_dir": str(runs_folder().absolute()),
        "ssh": {
            "known_hosts": list(ssh.known_hosts),
            "accept_new_host_keys": ssh.accept_new_host_keys,
            "jump_host": ssh.jump_host,
            "connect_timeout_s": ssh.connect_timeout_s,
            "command_timeout_s": ssh.command_timeout_s,
        },
        "case": {
            "data_dir": case.data_dir,
            "backbone_weights": case.backbone_weights,
            "config": case.config_name,
            "hparams": dict(case.hparams),
        },
        "nodes": [
            {
                "name": node.name,
                "address": node.address,
                "local": node.is_local,
                "port": None if node.is_local else node.port,
                "user": node.user,
                "accelerators": node.accelerators,
                "ib_hcas": list(node.ib_hcas),
                "socket_ifname": node.socket_ifname,
                "python": node.python,
                "workdir": node.workdir,
                "visible_devices": list(node.visible_devices) if node.visible_devices else None,
            }
            for node in spec.nodes
        ],
    }


def cluster_output(app: AppContext) -> Output:
    doc = cluster_document(app)
    ssh, case = doc["ssh"], doc["case"]
    settings = [
        ["cluster", f"{doc['name']} (from {doc['source']})"],
        ["vendor", doc["vendor"]],
        ["runtime", doc["runtime"]],
        ["backend", doc["backend"]],
        ["master port", str(doc["master_port"])],
        ["master address", doc["master_addr"] or "node 0's (docs/ssh.md)"],
        ["follower grace (s)", f"{doc['follower_grace_s']:g}"],
        ["store", doc["store"]],
        ["read store (query, serve)", doc["read_store"]],
        ["run folders", doc["runs_dir"]],
        ["ssh known_hosts", ", ".join(ssh["known_hosts"]) or "~/.ssh/known_hosts"],
        ["ssh accept new keys", "yes" if ssh["accept_new_host_keys"] else "no"],
        ["ssh jump host", ssh["jump_host"] or "-"],
        [
            "ssh timeouts (s)",
            f"connect {ssh['connect_timeout_s']:g}, command {ssh['command_timeout_s']:g}",
        ],
        ["data_dir", case["data_dir"]],
        ["backbone_weights", case["backbone_weights"]],
        ["config", case["config"] or "-"],
        ["hparams", ", ".join(f"{k}={v}" for k, v in case["hparams"].items()) or "-"],
    ]
    nodes = [
        [
            n["name"],
            "(this machine)" if n["local"] else n["address"],
            "-" if n["local"] else str(n["port"]),
            n["user"] or "-",
            str(n["accelerators"]),
            ",".join(n["ib_hcas"]) or "-",
            n["socket_ifname"] or "-",
            n["python"],
            n["workdir"],
        ]
        for n in doc["nodes"]
    ]
    columns = ["node", "address", "port", "user", "accel", "IB HCAs", "socket if", "python"]
    return Output(
        [
            Section("cluster", ["setting", "value"], settings),
            Section("nodes", [*columns, "workdir"], nodes, empty="(no nodes: Slurm chooses)"),
        ],
        doc,
    )
