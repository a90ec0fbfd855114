"""The `orchestrator` command: a thin layer over the library.

Each command group lives in its own module and registers itself on `cli`. Library code raises
typed errors (orchestrator.errors); `main()` prints them as one line and exits non-zero.
"""

from __future__ import annotations

import logging
import sys

import click

from orchestrator.cli.context import AppContext
from orchestrator.errors import OrchestratorError


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example: orchestrator submit 1x2   (runs the benchmark on this machine, SQLite store)",
)
@click.option(
    "--cluster",
    "cluster_file",
    envvar="ORCHESTRATOR_CLUSTER",
    type=click.Path(dir_okay=False),
    help="Cluster file (TOML). Default: $ORCHESTRATOR_CLUSTER, else ./cluster.toml if present, "
    "else the embedded default (this machine, SQLite).",
)
@click.option(
    "--db",
    "db_url",
    envvar="ORCHESTRATOR_DB",
    help="Results store URL, e.g. sqlite:///results.db or postgresql://user@host/db. "
    "Default: $ORCHESTRATOR_DB, else the cluster file's store.url, else sqlite:///orchestrator.db.",
)
@click.version_option(package_name="orchestrator")
@click.pass_context
def cli(ctx: click.Context, cluster_file: str | None, db_url: str | None) -> None:
    """Benchmark AI accelerators across a cluster and keep every result in SQL."""
    ctx.obj = AppContext(cluster_file=cluster_file, db_url=db_url)


def _register() -> None:
    # Imported here so that `orchestrator --help` stays fast and torch is never imported.
    from orchestrator.cli import commands

    commands.register(cli)


def _quiet_libraries() -> None:
    # paramiko logs a traceback for every failed handshake; we report each node's failure
    # ourselves, in one line.
    paramiko_log = logging.getLogger("paramiko")
    paramiko_log.addHandler(logging.NullHandler())
    paramiko_log.propagate = False


def main(argv: list[str] | None = None) -> None:
    _quiet_libraries()
    _register()
    try:
        cli.main(args=argv, prog_name="orchestrator", standalone_mode=False)
    except OrchestratorError as exc:
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
