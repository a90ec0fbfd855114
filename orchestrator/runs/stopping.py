"""Why a run was stopped, carried by the event that stops it: a signal to the process that
follows the run, `orchestrator cancel`, or a worker that was told to stop. The run's row then
names who stopped it and how, and `submit` exits with the code of that ending (docs/output.md,
"Exit codes")."""

from __future__ import annotations

import threading
from dataclasses import dataclass

EXIT_FAILED = 1  # the run failed, timed out or was lost
EXIT_CANCEL_REQUESTED = 4  # `orchestrator cancel` (from any shell) stopped it
EXIT_SIGINT = 130  # this process got SIGINT (Ctrl-C): 128 + 2
EXIT_SIGTERM = 143  # this process got SIGTERM: 128 + 15


@dataclass(frozen=True)
class StopCause:
    reason: str  # as the run's row says it: "cancelled by `orchestrator cancel` from a@host"
    exit_code: int


class StopEvent(threading.Event):
    """A threading.Event that remembers the first cause it was set with."""

    def __init__(self) -> None:
        super().__init__()
        self.cause: StopCause | None = None

    def stop(self, cause: StopCause) -> None:
        if not self.is_set():
            self.cause = cause
        self.set()


def cause_of(stop: threading.Event) -> StopCause | None:
    return stop.cause if isinstance(stop, StopEvent) else None


def stop_reason(stop: threading.Event, fallback: str = "cancelled") -> str:
    """The reason a cancelled run's row gets: the cause's, else `fallback`."""
    cause = cause_of(stop)
    return cause.reason if cause else fallback


def pass_on(source: threading.Event, target: threading.Event) -> None:
    """Set `target` because `source` was set, with `source`'s cause when it has one."""
    cause = cause_of(source)
    if cause is not None and isinstance(target, StopEvent):
        target.stop(cause)
    else:
        target.set()


def signal_cause(signame: str, who: str) -> StopCause:
    """`who` (e.g. "`orchestrator submit` pid 42 on lab1") got SIGINT or SIGTERM."""
    how = "SIGINT (Ctrl-C)" if signame == "SIGINT" else signame
    code = EXIT_SIGINT if signame == "SIGINT" else EXIT_SIGTERM
    return StopCause(f"cancelled: {who} got {how}", code)


def cancel_request_cause(note: str | None) -> StopCause:
    """`note`: the history's "cancel requested by alice@lab1" line (on Slurm followed by
    "(scancel JOB)"), when found."""
    by = note.removeprefix("cancel requested by ").split(" (", 1)[0].strip() if note else ""
    who = f" from {by}" if by else ""
    return StopCause(f"cancelled by `orchestrator cancel`{who}", EXIT_CANCEL_REQUESTED)
