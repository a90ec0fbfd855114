"""`orchestrator serve`: the results pages (the `web` extra)."""

from __future__ import annotations

import importlib.util

import click

from orchestrator.cli.context import AppContext
from orchestrator.errors import ConfigError

WEB_PACKAGES = ("starlette", "jinja2", "uvicorn")


def require_web_extra() -> None:
    missing = [name for name in WEB_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"orchestrator serve needs the web extra ({', '.join(missing)} not installed)",
            "install it with: pip install 'orchestrator[web]'",
        )


@click.command("serve")
@click.option(
    "--db",
    "db_url",
    help="Results store URL (default: the global --db, else as for every command).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8150, show_default=True)
@click.option(
    "--token",
    envvar="ORCHESTRATOR_WEB_TOKEN",
    help="Require this token on every request (needed for an address other than loopback). "
    "Give it as $ORCHESTRATOR_WEB_TOKEN or with --token-file: a command line is visible to "
    "every user in ps.",
)
@click.option(
    "--token-file",
    envvar="ORCHESTRATOR_WEB_TOKEN_FILE",
    help="Read the token from the first line of this file. Default: $ORCHESTRATOR_WEB_TOKEN_FILE.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    envvar="ORCHESTRATOR_WEB_ALLOWED_HOSTS",
    help="A further name that requests may give in their Host header (a reverse proxy's public "
    "name, a DNS alias); repeatable. Default: the address, and this machine's names when "
    "serving on every address.",
)
@click.option(
    "--refresh",
    type=click.FloatRange(1, 3600),
    default=5.0,
    show_default=True,
    help="Seconds between live refreshes of the queue page.",
)
@click.pass_obj
def serve(
    app: AppContext,
    db_url: str | None,
    host: str,
    port: int,
    token: str | None,
    token_file: str | None,
    allowed_hosts: tuple[str, ...],
    refresh: float,
) -> None:
    """Browse, compare and share the results in a web browser (read-only).

    Pages: runs (filters, sorting, pages), one run, the seed table (markdown and CSV
    downloads), compare, scaling and vendors, a configuration's history, campaigns and the
    queue. Every URL can be pasted into a chat. docs/web.md has screenshots.

    \b
    Examples:
      orchestrator serve                                  # http://127.0.0.1:8150/
      ORCHESTRATOR_WEB_TOKEN="$TOKEN" orchestrator --read-db postgresql://lab_reader@db/results \\
        serve --host 0.0.0.0
    """
    require_web_extra()
    from orchestrator.web.server import read_token
    from orchestrator.web.server import serve as run_server

    if db_url is not None:
        app.db_url = db_url
    from orchestrator.store import open_store

    url = app.read_url
    open_store(url).close()  # the schema revision first, with its remedy
    token = read_token(token, token_file)
    run_server(
        url, host, port, token, lambda line: click.echo(line, err=True), refresh, allowed_hosts
    )


def register(cli: click.Group) -> None:
    cli.add_command(serve)
