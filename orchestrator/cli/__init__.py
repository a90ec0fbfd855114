"""The `orchestrator` command: a thin layer over the library.

Each command group lives in its own module and registers itself on `cli`. Library code raises
typed errors (orchestrator.errors); `main()` prints them as one line and exits non-zero.
"""

from __future__ import annotations

import atexit
import gc
import logging
import re
import shlex
import sys
from collections.abc import Callable

import click

from orchestrator.cli.context import AppContext
from orchestrator.errors import OrchestratorError

# Global options that take a value: accepted after the subcommand too (moved in front of it).
MOVABLE_OPTIONS = ("--db", "--read-db", "--cluster")
GLOBAL_FLAGS = ("-v", "--verbose", "-q", "--quiet")
VERBOSE_SHORT = re.compile(r"-v+$")  # -v, -vv


def move_global_options(
    args: list[str], owns: Callable[[list[str], str], bool] = lambda words, flag: False
) -> list[str]:
    """`orchestrator submit 1x1 --db x.db -q` -> `orchestrator --db x.db -q submit 1x1`: --db,
    --cluster, -q and -v given after the subcommand are moved in front of it (up to a `--`),
    except a flag that the subcommand itself declares (`owns(words, flag)`: `image build -v`)."""
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            return args
        if token in MOVABLE_OPTIONS:
            i += 2
        elif token.startswith("-"):
            i += 1
        else:
            break  # the subcommand
    if i >= len(args):
        return args
    front, rest = list(args[:i]), list(args[i:])
    kept: list[str] = []
    j = 0
    while j < len(rest):
        token = rest[j]
        if token == "--":
            kept += rest[j:]
            break
        if token in MOVABLE_OPTIONS and j + 1 < len(rest):
            front += rest[j : j + 2]
            j += 2
            continue
        flag = "-v" if VERBOSE_SHORT.match(token) else token
        if token.startswith(tuple(f"{o}=" for o in MOVABLE_OPTIONS)) or (
            flag in GLOBAL_FLAGS and not owns(rest, flag)
        ):
            front.append(token)
        else:
            kept.append(token)
        j += 1
    return front + kept


def _declares(group: click.Group, words: list[str], flag: str) -> bool:
    """Whether the (sub)command that `words` name declares `flag` itself."""
    command: click.Command = group
    for word in words:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
    return any(flag in p.opts or flag in p.secondary_opts for p in command.params)


class _Cli(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        moved = move_global_options(args, lambda words, flag: _declares(self, words, flag))
        return super().parse_args(ctx, moved)


@click.group(
    cls=_Cli,
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
@click.option(
    "--read-db",
    "read_db_url",
    envvar="ORCHESTRATOR_READ_DB",
    help="Store URL of a SELECT-only role, for `query` and `serve` (docs/security.md). "
    "Default: $ORCHESTRATOR_READ_DB, else --db, else the cluster file's store.read_url, "
    "else the store URL.",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More detail: every progress event as a line (no 10 s spacing).",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Only results, warnings, errors and each run's final line: no progress.",
)
@click.version_option(package_name="orchestrator")
@click.pass_context
def cli(
    ctx: click.Context,
    cluster_file: str | None,
    db_url: str | None,
    read_db_url: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    """Benchmark AI accelerators across a cluster and keep every result in SQL.

    Global options (--cluster, --db, --read-db, -q, -v) may also follow the command.
    """
    from orchestrator.runs.progress import set_verbosity

    level = -1 if quiet else min(verbose, 1)
    set_verbosity(level)
    env = click.core.ParameterSource.ENVIRONMENT
    ctx.obj = AppContext(
        cluster_file=cluster_file,
        db_url=db_url,
        read_db_url=read_db_url,
        verbosity=level,
        db_from="env" if ctx.get_parameter_source("db_url") == env else "option",
        cluster_from="env" if ctx.get_parameter_source("cluster_file") == env else "option",
    )
    _invocation.app = ctx.obj


class _Invocation:
    """The AppContext of this process's command, for hints printed after it ended."""

    app: AppContext | None = None


_invocation = _Invocation()


def with_global_options(text: str, app: AppContext | None) -> str:
    """Every `orchestrator <command>` a remedy suggests, with the --cluster/--db the user gave:
    a hint followed literally then acts on the same store, not on ./orchestrator.db."""
    if app is None or "orchestrator --" in text:
        return text
    options = " ".join(shlex.quote(word) for word in app.global_options())
    if not options:
        return text
    commands = "|".join(sorted(cli.commands, key=len, reverse=True))
    return re.sub(rf"\borchestrator (?=(?:{commands})\b)", f"orchestrator {options} ", text)


def _register() -> None:
    # Imported here so that `orchestrator --help` stays fast and torch is never imported.
    from orchestrator.cli import commands

    commands.register(cli)


def _spare_the_collector() -> None:
    """For the program itself (not a test calling main() in its own process): what start-up
    made (the modules, the commands) lives as long as the process, so the cyclic collector
    need not scan it again and again; and the process's memory is returned by its exit, so the
    interpreter's shutdown need not run a full collection over every object of every module
    loaded (SQLAlchemy, paramiko, rich). Together 0.1 to 0.5 s of a `submit`
    (bench/bench_submit_overhead.py). Stores and connections are closed by the commands
    themselves, never by a collection."""
    gc.freeze()
    atexit.register(gc.freeze)


def _quiet_libraries() -> None:
    # paramiko logs a traceback for every failed handshake; we report each node's failure
    # ourselves, in one line.
    paramiko_log = logging.getLogger("paramiko")
    paramiko_log.addHandler(logging.NullHandler())
    paramiko_log.propagate = False


def main(argv: list[str] | None = None) -> None:
    """The `orchestrator` program (argv None: sys.argv), or one command run in-process."""
    _quiet_libraries()
    _register()
    if argv is None:
        _spare_the_collector()
    try:
        cli.main(args=argv, prog_name="orchestrator", standalone_mode=False)
    except OrchestratorError as exc:
        if exc.remedy:
            exc.remedy = with_global_options(exc.remedy, _invocation.app)
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
