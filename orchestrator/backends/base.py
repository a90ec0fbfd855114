"""The seam between the CLI (and the queue) and the systems that run a job. A backend is a
peer behind this protocol: `ssh` (orchestrator/backends/ssh: torchrun over SSH, node leases,
node guards, adoption) and `slurm` (orchestrator/backends/slurm: sbatch, squeue/sacct,
scancel). Adding one (Kubernetes, say) means a new package that implements `Backend` and a line
in orchestrator/backends/__init__.py; the CLI never branches on a backend's name.

A backend plans a run (pure: what `--dry-run` prints is what runs), executes it through the
backend-neutral lifecycle (orchestrator/runs), checks nodes (`doctor`), hands runs to the
unattended path (`detach`), cancels, attaches to and follows runs whose follower died."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.states import BackendName, Precision

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy import Connection

    from orchestrator.runs.health import HealthReport
    from orchestrator.runs.lifecycle import Outcome, SubmitRequest
    from orchestrator.specs import ClusterSpec, JobSpec
    from orchestrator.store import Store


@dataclass(frozen=True)
class HealthRequest:
    """What `orchestrator health` asks of a backend: the nodes a run of `topology` would take
    (or `node_names`), probed in `precision`; files under `runs_dir`."""

    cluster: ClusterSpec
    topology: str
    node_names: tuple[str, ...] | None
    precision: Precision
    store: Store
    runs_dir: Path
    stop: threading.Event
    console: Console


@dataclass(frozen=True)
class DoctorCheck:
    node: str  # '' for a check of the whole cluster (Slurm's controller, partition, ...)
    check: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class DoctorReport:
    """What `orchestrator doctor` found; the CLI prints it in the format asked for."""

    cluster: str
    source: str
    checks: tuple[DoctorCheck, ...]
    notes: tuple[str, ...] = ()  # whole lines said below the table (e.g. a connect error)
    ready: str = "all nodes ready"  # the verdict when every check passed
    not_ready: str = "some nodes are not ready"

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


class PlannedRun(Protocol):
    """One run as a backend planned it."""

    @property
    def job(self) -> JobSpec: ...

    def render(self) -> str:
        """What `--dry-run` prints: every command that would run."""
        ...

    def where(self) -> str:
        """Where it runs, for the line `submit` prints first ('on n1, n2', 'through Slurm')."""
        ...

    def check_free(self, store: Store) -> None:
        """Refuse (NodesBusy) before anything is written when its nodes are taken."""
        ...

    def execute(
        self,
        req: SubmitRequest,
        store: Store,
        runs_dir: Path,
        stop: threading.Event,
        console: Console,
        queued_at: datetime | None = None,
    ) -> Outcome:
        """Run it to its end; the run row and folder are final whatever happens. `queued_at`:
        a queued run a worker claimed (its row exists, its leases are held)."""
        ...


@dataclass
class Detached:
    """Runs handed to the unattended path: their ids (in the order asked) and the writer of
    their rows, called inside the caller's one transaction."""

    run_ids: list[str]
    write: Callable[[Connection], None]


DetachItem = tuple["ClusterSpec", "SubmitRequest", Mapping[str, Any]]


class Followers(Protocol):
    """What a worker runs beside its queue for one backend: adopting and following the runs
    nobody follows. A context manager; `scan` looks for new ones now (some backends poll in a
    thread of their own and return 0)."""

    def __enter__(self) -> Followers: ...

    def __exit__(self, *exc: object) -> None: ...

    def scan(self) -> int: ...

    def active(self) -> bool: ...

    def ended(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class WorkerContext:
    """What a worker hands each backend's followers."""

    store: Store
    holder: str
    runs_dir: Path
    stop: threading.Event
    console: Console
    ttl_s: float
    poll_s: float


class Backend(Protocol):
    name: BackendName
    detached_as: str  # how `campaign submit` counts its runs: '3 run(s) queued'
    detach_hint: str | None  # said once after runs were detached, or None

    def plan(
        self, cluster: ClusterSpec, req: SubmitRequest, run_id: str | None = None
    ) -> PlannedRun:
        """Pure planning: nothing is contacted or written."""
        ...

    def doctor(
        self, cluster: ClusterSpec, topology: str | None, node_names: str | None
    ) -> DoctorReport:
        """Check what a run needs; the report says what is missing."""
        ...

    def detach(self, items: Sequence[DetachItem]) -> AbstractContextManager[Detached]:
        """Plan every item now (mistakes fail here) and prepare them for the caller's
        transaction; leaving the block with an exception undoes whatever was prepared."""
        ...

    def cancel(self, store: Store, run_id: str, by: str, runs_dir: Path, console: Console) -> str:
        """Stop a run of this backend (or ask its follower to); returns what happened."""
        ...

    def attach(
        self,
        store: Store,
        run_id: str,
        holder: str,
        runs_dir: Path,
        stop: threading.Event,
        console: Console,
    ) -> None:
        """Show a running run's progress until it ends or `stop`; adopt it if nobody follows
        it."""
        ...

    def followers(self, ctx: WorkerContext) -> Followers:
        """The worker's followers of this backend's unfollowed runs."""
        ...

    def settle(self, store: Store, holder: str, console: Console, runs_dir: Path) -> list[str]:
        """End the runs whose follower died and whose grace has passed; returns their ids."""
        ...

    def describe_running(self, conn: Connection) -> dict[str, str]:
        """run id -> who follows it and how, for the running runs this backend knows of."""
        ...

    def health(self, request: HealthRequest) -> tuple[HealthReport, int]:
        """`orchestrator health NxM`: probe, judge and store on the nodes a run would take;
        returns the report and its stored check's id (docs/health.md)."""
        ...
