"""What every command shares: the cluster file and the store URL, loaded on first use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.specs import ClusterSpec


@dataclass
class AppContext:
    cluster_file: str | None = None
    db_url: str | None = None
    _cluster: ClusterSpec | None = field(default=None, repr=False)

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

    def open_store(self) -> Any:
        """The results store, checked to be at the current schema revision."""
        from orchestrator.store import open_store

        return open_store(self.store_url)

    def settle_orphans(self, store: Any, console: Any = None) -> list[str]:
        """Runs whose follower died and whose grace has passed with nobody adopting them: the
        node guards stopped them; collect what they left, make sure nothing runs, store them
        (`lost`, or `succeeded` when training had finished). Every command that opens the
        store for runs does this, so a stale `running` row does not outlive the grace. A
        problem here is said in one line and never stops the command itself."""
        from rich.console import Console

        from orchestrator.errors import OrchestratorError
        from orchestrator.queue.adoption import reconcile
        from orchestrator.submit import submitter

        console = console or Console(stderr=True)
        holder = f"{self.command_name} {submitter()} pid {os.getpid()}"
        try:
            return reconcile(store, holder, console, runs_folder(), mode="settle")
        except OrchestratorError as exc:
            console.print(f"[yellow]could not settle abandoned runs: {exc.one_line()}[/]")
            return []

    @property
    def command_name(self) -> str:
        import click

        ctx = click.get_current_context(silent=True)
        return ctx.command_path.removeprefix("orchestrator ") if ctx else "orchestrator"


def runs_folder(option: str | None = None) -> Path:
    """Local run folders: the option, else $ORCHESTRATOR_RUNS_DIR, else ./runs."""
    return Path(option or os.environ.get("ORCHESTRATOR_RUNS_DIR") or "runs")
