"""Who follows a run, and whether that follower is still there: the one rule that both the
settling code (backends adopt and settle runs by it) and what read-only paths show (the
`run_followers` view of migration 0006, the web pages) decide by.

A follower holds leases on the run (node_leases for runs on our nodes, a slurm_follows row
for a job a scheduler owns) and renews them while it lives. Its leases expired: the follower
is gone and the run awaits adoption. A run on our nodes whose follower has been gone for the
cluster's grace (plus the node guards' margin) awaits settling: its node guards have stopped
it, and the next writer (a worker, `runs list`, `attach`) records it lost. A job a scheduler
owns is never settled by the grace: a worker adopts it whenever it comes."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Column, Connection, Float, MetaData, String, Table, select

from orchestrator.specs import DEFAULT_FOLLOWER_GRACE_S
from orchestrator.store.models import UtcDateTime

FollowerKind = Literal["submit", "attach", "cancel", "worker"]
FollowerState = Literal["alive", "gone", "lost-pending"]

# Two polls of the node guard (backends/ssh/guard.py POLL_S = 2 s): it has acted by then.
SETTLE_MARGIN_S = 4.0

_PREFIXED: tuple[FollowerKind, ...] = ("submit", "attach", "cancel")
# "alice@lab1 pid 42" (submit, attach), "lab1:42" (a worker, or a Slurm submit)
_USER_PID = re.compile(r"^(?:[^@\s]+@)?(?P<host>[^\s@]+) pid (?P<pid>\d+)$")
_HOST_PID = re.compile(r"^(?P<host>[^\s:]+):(?P<pid>\d+)$")


@dataclass(frozen=True)
class Follower:
    """Who follows a run: a foreground `submit`, an `attach`, a `cancel` that cleans a run
    whose follower is gone, or a worker (named by its id). Stored in the leases' `holder`
    column as `encoded`: "submit alice@lab1 pid 42", "attach alice@lab1 pid 42", or the
    worker's id alone ("lab1:42", or its --id)."""

    kind: FollowerKind
    name: str

    @property
    def encoded(self) -> str:
        return self.name if self.kind == "worker" else f"{self.kind} {self.name}"

    @classmethod
    def decode(cls, holder: str) -> Follower:
        kind, _, name = holder.partition(" ")
        for prefixed in _PREFIXED:
            if kind == prefixed and name:
                return cls(prefixed, name)
        return cls("worker", holder)

    def described(self) -> str:
        """As `orchestrator queue` names it: "submit alice@lab1 pid 42", "worker lab1:42"."""
        return f"{self.kind} {self.name}"

    def process(self) -> tuple[str, int] | None:
        """(host, pid) the follower names, or None (a worker started with --id)."""
        match = _USER_PID.match(self.name) or _HOST_PID.match(self.name)
        return (match["host"], int(match["pid"])) if match else None


def follower_state(
    expires_at: datetime | None, grace_s: float | None, now: datetime
) -> FollowerState:
    """The rule. `expires_at`: the latest expiry of the run's leases (None: it holds none);
    `grace_s`: how long its nodes run on without a follower (None: a scheduler owns the job,
    it is never settled by the grace). The view run_followers (migration 0006) mirrors it."""
    if expires_at is not None and expires_at > now:
        return "alive"
    if grace_s is None:
        return "gone"
    if expires_at is None or now >= expires_at + timedelta(seconds=grace_s + SETTLE_MARGIN_S):
        return "lost-pending"
    return "gone"


def follower_grace_s(request: Mapping[str, Any]) -> float:
    """The grace a stored request's cluster gives its run: [cluster] follower_grace_s of the
    stored cluster file (the view reads the same JSON path), else the default."""
    data = request.get("cluster_data")
    table = data.get("cluster") if isinstance(data, Mapping) else None
    grace = table.get("follower_grace_s") if isinstance(table, Mapping) else None
    if isinstance(grace, (int, float)) and not isinstance(grace, bool):
        return float(grace)
    return DEFAULT_FOLLOWER_GRACE_S


# The view of migration 0006, described for SQLAlchemy (views are not in Base.metadata).
RUN_FOLLOWERS = Table(
    "run_followers",
    MetaData(),
    Column("run_id", String),
    Column("cluster", String),
    Column("backend", String),
    Column("status", String),
    Column("holder", String),
    Column("lease_expires_at", UtcDateTime),
    Column("grace_s", Float),
    Column("follower", String),
)


@dataclass(frozen=True)
class FollowerNow:
    """A running run's follower as the view says it now (what the pages show)."""

    state: FollowerState
    holder: str | None
    lease_expires_at: datetime | None
    grace_s: float | None


def followers_now(conn: Connection, run_ids: Sequence[str]) -> dict[str, FollowerNow]:
    """run id -> its follower's state, for the given runs that are running with a stored
    request; read from the run_followers view, so read-only connections see it too."""
    if not run_ids:
        return {}
    view = RUN_FOLLOWERS.c
    query = select(
        view.run_id, view.follower, view.holder, view.lease_expires_at, view.grace_s
    ).where(view.run_id.in_(tuple(run_ids)), view.follower.is_not(None))
    return {
        run_id: FollowerNow(state, holder, expires, grace)
        for run_id, state, holder, expires, grace in conn.execute(query)
    }
