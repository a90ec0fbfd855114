"""What every command shares: the cluster file and the store URL (loaded on first use), the
run folders, durations, signal handling, the store a run-starting command opens, and the
seed-table row printed when a run ends."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from socket import gethostname
from types import FrameType
from typing import TYPE_CHECKING

import click

from orchestrator.errors import ConfigError
from orchestrator.runs.stopping import StopEvent, signal_cause

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.specs import ClusterSpec
    from orchestrator.store import Store


@dataclass
class AppContext:
    cluster_file: str | None = None
    db_url: str | None = None
    read_db_url: str | None = None  # for `query` and `serve`: a SELECT-only role
    verbosity: int = 0  # -1 quiet (-q), 0, 1 verbose (-v)
    # Where --db and --cluster came from: "option" (the command line) or "env" ($ORCHESTRATOR_*).
    db_from: str = "option"
    cluster_from: str = "option"
    _cluster: ClusterSpec | None = field(default=None, repr=False)

    @property
    def store_origin(self) -> str:
        """Where the store URL came from, for questions and hints about it."""
        if self.db_url:
            return "from $ORCHESTRATOR_DB" if self.db_from == "env" else "from --db"
        if self.cluster.store_url:
            return f"from [store] url in {self.cluster.source}"
        return "the default file in this directory"

    def global_options(self) -> list[str]:
        """`--cluster FILE --db URL` as given (option or environment), for commands we suggest:
        following a hint literally then reaches the same store and cluster. The URL as typed,
        its password hidden (the pure redaction: a hint loads no store)."""
        from orchestrator.redact import redact_text

        words: list[str] = []
        if self.cluster_file:
            words += ["--cluster", self.cluster_file]
        if self.db_url:
            words += ["--db", redact_text(self.db_url)]
        return words

    @property
    def cluster(self) -> ClusterSpec:
        if self._cluster is None:
            from orchestrator.config import load_cluster

            self._cluster = load_cluster(self.cluster_file)
        return self._cluster

    @property
    def store_url(self) -> str:
        from orchestrator.config import resolve_store_url

        return resolve_store_url(self.db_url, self.cluster)

    @property
    def read_url(self) -> str:
        """The URL `query` and `serve` connect with (docs/security.md, "Least privilege")."""
        from orchestrator.config import resolve_read_url

        return resolve_read_url(self.read_db_url, self.db_url, self.cluster)

    def open_store(self) -> Store:
        """The results store, checked to be at the current schema revision."""
        from orchestrator.store import open_store

        return open_store(self.store_url)

    def settle_orphans(self, store: Store, console: Console | None = None) -> list[str]:
        """Runs whose follower died and whose grace has passed with nobody adopting them: the
        node guards stopped them; collect what they left, make sure nothing runs, store them
        (`lost`, or `succeeded` when training had finished). Every command that opens the
        store for runs does this, so a stale `running` row does not outlive the grace. A
        problem here is said in one line and never stops the command itself."""
        from rich.console import Console

        from orchestrator import backends
        from orchestrator.errors import OrchestratorError
        from orchestrator.runs.lifecycle import submitter
        from orchestrator.store.orphans import backends_with_active_runs

        console = console or Console(stderr=True)
        holder = f"{self.command_name} {submitter()} pid {os.getpid()}"
        settled: list[str] = []
        try:
            # Only the backends with a queued or running run are loaded and asked
            for name in sorted(backends_with_active_runs(store)):
                settled += backends.by_name(name).settle(store, holder, console, runs_folder())
        except OrchestratorError as exc:
            console.print(f"[yellow]could not settle abandoned runs: {exc.one_line()}[/]")
        return settled

    @property
    def command_name(self) -> str:
        ctx = click.get_current_context(silent=True)
        return ctx.command_path.removeprefix("orchestrator ") if ctx else "orchestrator"


def command_line() -> str:
    """This process's command line as recorded with a run (runs.command, manifest.json, the
    queued request): passwords in URLs and connection strings hidden."""
    import shlex

    from orchestrator.redact import redact_argv

    return shlex.join(["orchestrator", *redact_argv(sys.argv[1:])])


def runs_folder(option: str | None = None) -> Path:
    """Local run folders: the option, else $ORCHESTRATOR_RUNS_DIR, else ./runs."""
    return Path(option or os.environ.get("ORCHESTRATOR_RUNS_DIR") or "runs")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | None, option: str) -> float | None:
    if text is None or text in ("", "none", "0"):
        return None
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{option} {text!r} is not a duration", "write e.g. 90s, 45m or 2h")
    return float(match.group(1)) * _UNITS[match.group(2)]


@contextmanager
def stop_on_signals(
    on_hangup: Callable[[], None] | None = None,
    announce: str = "stopping the run on every node…",
) -> Iterator[StopEvent]:
    """Ctrl-C and SIGTERM set an event the launcher checks every poll; it then stops all nodes.
    The event's cause names this process and the signal (the run's row then says it). SIGHUP
    (a closed terminal) calls `on_hangup` instead, when given: the run goes on."""
    stop = StopEvent()
    ctx = click.get_current_context(silent=True)
    who = f"`{ctx.command_path if ctx else 'orchestrator'}` pid {os.getpid()} on {gethostname()}"

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not stop.is_set():
            say(f"\n{name}: {announce}")
        stop.stop(signal_cause(name, who))

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    if on_hangup is not None:
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda _s, _f: on_hangup())
    try:
        yield stop
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass  # the terminal is gone


def open_store_for_submit(app: AppContext) -> Store:
    """A SQLite store that does not exist yet is created on first use (the embedded default
    works out of the box); an existing store of any kind must be upgraded explicitly
    (`orchestrator db upgrade`), so a lab's database never changes behind its back."""
    from orchestrator.store import open_store
    from orchestrator.store.engine import parse_url

    url = app.store_url
    parsed = parse_url(url)
    new_file = parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).exists()
    return open_store(url, create=new_file)


def print_summary(
    store: Store, run_id: str, run_dir: Path | str, wall_s: float | None = None
) -> None:
    """The one line every run ends with (stderr): status, run id, wall time, p_core, mAP and
    the run folder. `wall_s`: measured by the caller; else submission to finish as stored."""
    from orchestrator.runs.progress import summary_line
    from orchestrator.store.queries import run_headline
    from orchestrator.store.stragglers import stored_line

    with store.reading() as conn:
        head = run_headline(conn, run_id)
    if head is None:
        return
    wall = wall_s if wall_s is not None else head.wall_s
    slow = stored_line(head.stragglers, short=True)
    say(summary_line(head.status, run_id, wall, head.p_core, head.map, run_dir, slow))


def print_outcome(store: Store, run_id: str, status: str) -> None:
    """A succeeded run's row of the seed table, with its environment above it."""
    from orchestrator.reports.report import render_report
    from orchestrator.store.queries import Selection, environment, seed_rows

    if status == "succeeded":
        with store.reading() as conn:
            rows = seed_rows(conn, Selection(run_ids=(run_id,)))
            env = environment(conn, [run_id])
        click.echo(render_report(env, rows, "markdown"), nl=False)
