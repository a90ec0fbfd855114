"""`orchestrator cluster ...`: what the tool understood of the cluster file."""

from __future__ import annotations

import click
from rich.table import Table

from orchestrator.cli.context import AppContext
from orchestrator.report import console as report_console


def register(cli: click.Group) -> None:
    cli.add_command(cluster)


@click.group()
def cluster() -> None:
    """Inspect the cluster description.

    Example: orchestrator --cluster lab.toml cluster show
    """


@cluster.command("show")
@click.pass_obj
def show(app: AppContext) -> None:
    """Print the cluster as understood: nodes, SSH, store, case settings.

    Example: orchestrator --cluster examples/cluster.toml cluster show
    """
    spec = app.cluster
    from orchestrator.store import redact_url

    console = report_console()
    console.print(f"[bold]cluster[/] {spec.name}  (from {spec.source})")
    console.print(
        f"vendor {spec.vendor}   runtime {spec.runtime}   backend {spec.backend}   "
        f"master port {spec.master_port}"
    )
    console.print(f"store  {redact_url(app.store_url)}")
    ssh = spec.ssh
    console.print(
        f"ssh    known_hosts {', '.join(ssh.known_hosts) or '~/.ssh/known_hosts'}   "
        f"accept new keys {'yes' if ssh.accept_new_host_keys else 'no'}   "
        f"jump host {ssh.jump_host or '-'}   timeouts connect {ssh.connect_timeout_s:g}s "
        f"command {ssh.command_timeout_s:g}s"
    )
    case = spec.case
    console.print(
        f"case   data {case.data_dir}   backbone {case.backbone_weights}   "
        f"config {case.config_name or '-'}   hparams {case.hparams or '-'}"
    )
    table = Table(
        "node", "address", "port", "user", "accel", "IB HCAs", "socket if", "python", "workdir"
    )
    for node in spec.nodes:
        table.add_row(
            node.name,
            "(this machine)" if node.is_local else node.address,
            "-" if node.is_local else str(node.port),
            node.user or "-",
            str(node.accelerators),
            ",".join(node.ib_hcas) or "-",
            node.socket_ifname or "-",
            node.python,
            node.workdir,
        )
    console.print(table)
