"""Runs whose follower died (a killed `submit`, a dead worker, a crashed control host).

Their leases expire; then whoever notices takes them over in the store (`store.orphans.adopt`, so
only one does) and, by `mode`:

- follow: re-attach to the run on its nodes (a worker, `orchestrator attach`): feed the node
  guards' heartbeat, show rank 0's progress, stop every node on a failure, then collect and
  publish as if nothing had happened. A run that ended while nobody followed is collected
  and published as it ended: a result is never lost because its submitter died.
- settle: the grace has passed, the node guards have stopped the run (any short command that
  opens the store): collect what is there, make sure nothing runs, publish it (`lost`, or
  `succeeded` if training had finished).
- cancel: `orchestrator cancel` of a run nobody follows: stop it everywhere, `cancelled`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.backends.ssh.guard import NodeState, node_state
from orchestrator.backends.ssh.launch import (
    TAIL_LINES,
    Ending,
    Execution,
    collect,
    stop_everywhere,
)
from orchestrator.clock import utcnow
from orchestrator.errors import OrchestratorError
from orchestrator.runfolder.folder import make_run_dir
from orchestrator.runs.ending import finalize, past_limits
from orchestrator.runs.failure import Failure, diagnose
from orchestrator.runs.follower_pool import FollowerPool
from orchestrator.runs.keeper import RENEW_MAX_S, LeaseKeeper
from orchestrator.runs.liveness import LeaseSilence, liveness
from orchestrator.runs.progress import ProgressView, parse_event
from orchestrator.runs.request import cluster_from, decode_request
from orchestrator.runs.stopping import StopEvent, stop_reason
from orchestrator.states import FinalStatus
from orchestrator.store import leases
from orchestrator.store import status as run_status
from orchestrator.store.campaigns import finish_campaign_if_done
from orchestrator.store.follower import follower_grace_s, follower_state
from orchestrator.store.orphans import (
    Orphan,
    adopt,
    adoptee_rows,
    end_run,
    find_orphans,
    follow_state,
    release_final_leases,
)

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.plan import NodePlan, Plan
    from orchestrator.runs.lifecycle import SubmitRequest
    from orchestrator.store import Store
    from orchestrator.transport import NodeSession, Transport

POLL_S = 1.0
STALE_LEASE_S = 3 * RENEW_MAX_S  # a live follower renews its lease at least this often, thrice
# What an adopter does with an orphan (the module's docstring says each).
AdoptMode = Literal["follow", "settle", "cancel"]


@dataclass(frozen=True)
class Adoptee:
    """What an adopter knows of a run from the store."""

    orphan: Orphan
    plan: Plan
    req: SubmitRequest
    submitted_at: datetime
    started_at: datetime | None

    @property
    def run_id(self) -> str:
        return self.orphan.run_id

    def gone_since(self) -> str:
        owners = ", ".join(self.orphan.holders) or "its follower"
        at = self.orphan.expired_at
        when = at.isoformat(timespec="seconds") if at else "?"
        return f"{owners} stopped following (its leases expired at {when})"


def settle_due(orphan: Orphan, now: datetime | None = None) -> bool:
    """The grace has passed since the follower's leases expired: the node guards have acted
    (the store's one rule, which `orchestrator query` and the web pages show too)."""
    grace = follower_grace_s(orphan.request)
    return follower_state(orphan.expired_at, grace, now or utcnow()) == "lost-pending"


def load(store: Store, orphan: Orphan) -> Adoptee:
    """The run's plan as its submitter made it (same nodes, same paths), from its request."""
    from orchestrator.backends.ssh.preflight import VISIBLE_DEVICES_KEY
    from orchestrator.backends.ssh.submit import make_plan

    row = adoptee_rows(store, orphan.run_id)
    ranked = row.ranked
    nodes = [n for (n, _) in ranked] or list(orphan.nodes)
    cluster = cluster_from(orphan.request)
    req = decode_request(orphan.request, nodes)
    # The devices its preflight found in the nodes' environments (what the ranks run on).
    found = {n: (env or {}).get(VISIBLE_DEVICES_KEY) for n, env in ranked}
    values = found if any(v is not None for v in found.values()) else None
    plan = make_plan(cluster, req, run_id=orphan.run_id, node_values=values)
    return Adoptee(orphan, plan, req, row.submitted_at, row.started_at)


def runs_dir_for(request: Any, default: Path) -> Path:
    """Where the run's folder goes: its submitter's folder when this machine has it."""
    stored = request.get("runs_dir")
    if stored and Path(stored).is_dir():
        return Path(stored)
    return default


def adopt_run(
    store: Store,
    orphan: Orphan,
    holder: str,
    runs_dir: Path,
    stop: threading.Event,
    console: Console,
    ttl_s: float,
    mode: AdoptMode = "follow",
    why: str | None = None,
) -> str | None:
    """Take the orphan over and bring it to a final status; returns it, or None when another
    adopter was first or the nodes could not be reached (the leases then expire again and a
    later adopter retries)."""
    if not adopt(store, orphan.run_id, holder, ttl_s):
        return None
    try:
        adoptee = load(store, orphan)
    except OrchestratorError as exc:
        reason = f"cannot re-plan the run to adopt it: {exc.one_line()}"
        end_run(store, orphan.run_id, "failed", reason, ["running"])
        return "failed"
    _history(store, orphan.run_id, f"{mode} by {holder}: {adoptee.gone_since()}")
    run_stop = StopEvent()
    if mode == "follow":
        console.print(f"[bold]run {orphan.run_id}[/]: adopted by {holder}")
    with LeaseKeeper(store, orphan.run_id, holder, ttl_s, stop, run_stop):
        status = _finish(
            store, adoptee, runs_dir_for(orphan.request, runs_dir), run_stop, console, mode, why
        )
    if status is not None:
        leases.release(store, orphan.run_id)
        finish_campaign_if_done(store, orphan.request.get("campaign_id"))
        console.print(f"run {orphan.run_id}: {status}")
    return status


def _history(store: Store, run_id: str, reason: str) -> None:
    with store.transaction() as conn:
        run_status.note(conn, run_id, "running", reason)


def _finish(
    store: Store,
    adoptee: Adoptee,
    runs_dir: Path,
    stop: threading.Event,
    console: Console,
    mode: AdoptMode,
    why: str | None,
) -> str | None:
    from orchestrator.backends.ssh.submit import container_cleanup, ssh_manifest
    from orchestrator.transport import NodeSession

    plan = adoptee.plan
    run_dir = runs_dir / adoptee.run_id
    nodes = [n.node for n in plan.nodes]
    with NodeSession(nodes, plan.job.cluster.ssh, require_all=False) as session:
        if session.connect_failures:
            detail = "; ".join(f"{n}: {p}" for n, p in session.connect_failures.items())
            console.print(f"[yellow]run {adoptee.run_id}: cannot reach its nodes ({detail})[/]")
            return None
        make_run_dir(run_dir, exist_ok=True)
        states = _states(session, plan, -1)
        cleanup = container_cleanup(plan)
        running = any(not s.ended for s in states.values())
        execution = None
        if running and mode == "follow":
            with ProgressView(adoptee.run_id, console) as view:
                view.replay_from(adoptee.submitted_at)
                execution = Reattach(plan, session, view, stop, cleanup).follow(adoptee)
        problems = stop_everywhere(session, plan, cleanup)  # whatever ended it: nothing stays
        if problems:
            detail = "; ".join(f"{n}: {p}" for n, p in problems.items())
            console.print(f"[yellow]run {adoptee.run_id}: nodes not cleaned ({detail})[/]")
            return None
        missing = collect(session, plan, run_dir, 300.0)
    status, failure = _ending(adoptee, states, execution, missing, run_dir, mode, why)
    manifest = ssh_manifest(
        plan,
        adoptee.req,
        "running",
        submitted_at=adoptee.submitted_at,
        started_at=adoptee.started_at,
    )
    return finalize(manifest, run_dir, store, status, failure).status


def _ending(
    adoptee: Adoptee,
    states: dict[str, NodeState],
    execution: Execution | None,
    missing: dict[str, str],
    run_dir: Path,
    mode: AdoptMode,
    why: str | None,
) -> tuple[FinalStatus, Failure | None]:
    """The run's final status and reason, from how its nodes stood when it was adopted."""
    names = ", ".join(n.node.name for n in adoptee.plan.nodes)
    gone = adoptee.gone_since()
    if mode == "cancel":
        return "cancelled", Failure(f"{why or 'cancelled'}; {gone}; nodes {names} cleaned")
    if execution is not None:
        if execution.status == "succeeded" and missing:
            detail = "; ".join(f"{n}: {p}" for n, p in missing.items())
            return "failed", Failure(f"collection failed: {detail}")
        if execution.status != "detached":  # an adopter's watch is never taken over
            return execution.status, execution.failure
    codes = {n: s.exit_code for n, s in states.items()}
    if all(code == 0 for code in codes.values()) and not missing:
        return "succeeded", None  # training had finished: the guards only stopped samplers
    if any(s.abandoned_at is not None for s in states.values()):
        reason = f"{gone}; no follower within the grace; nodes {names} cleaned"
        return "lost", Failure(reason)
    failed = [n for n, code in codes.items() if code not in (0, None)]
    if failed:
        log = run_dir / "logs" / f"{failed[0]}.log"
        tail = log.read_text(errors="replace").splitlines()[-TAIL_LINES:] if log.exists() else []
        return "failed", diagnose(failed[0], codes[failed[0]], tail)
    if mode == "settle":
        return "lost", Failure(f"{gone}; no follower within the grace; nodes {names} cleaned")
    vanished = ", ".join(n for n, code in codes.items() if code is None)
    return "lost", Failure(
        f"{gone}; the workload on {vanished} never started or ended without an exit code; "
        f"nodes {names} cleaned"
    )


def _states(session: NodeSession, plan: Plan, rank0_offset: int) -> dict[str, NodeState]:
    by_node = {np_.node.name: np_ for np_ in plan.nodes}
    first = plan.nodes[0].node.name

    def one(t: Transport) -> NodeState:
        offset = rank0_offset if t.node.name == first else -1
        return node_state(t, by_node[t.node.name], plan.job.run_id, offset)

    return session.fan_out(one, timeout=60, what="reading the run's state")


class _LeaseWait:
    """Says once, as a phase, that the run's follower is gone (its pid on this host) or stopped
    renewing its lease, and when the lease runs out and this attach adopts the run: not
    "still running" for the minute the dead follower's lease has left."""

    def __init__(self, view: ProgressView) -> None:
        self.view, self.silence, self.said = view, LeaseSilence(), False

    def check(self, follower: Orphan) -> None:
        quiet = self.silence.seen(follower.expired_at)
        if self.said or follower.expired_at is None:
            return
        holders = ", ".join(follower.holders) or "its follower"
        alive = [liveness(h) for h in follower.holders]
        if alive and all(a is False for a in alive):
            why = f"{holders} is gone (no such process on this host)"
        elif quiet > STALE_LEASE_S and not any(alive):
            why = f"{holders} stopped renewing its lease {quiet:.0f} s ago"
        else:
            return
        left = max(0.0, (follower.expired_at - utcnow()).total_seconds())
        until = follower.expired_at.strftime("%H:%M:%S")
        self.view.phase(
            "waiting for the lease",
            f"{why}; it runs out at {until} UTC (in {left:.0f} s), then this attach adopts "
            "the run: collects, stores and cleans it",
        )
        self.said = True


class Reattach:
    """Follows a run started by another process: its nodes' exit files and rank 0's log, read
    once a second (each read feeds the guards' heartbeat); any failure stops every node."""

    def __init__(
        self,
        plan: Plan,
        session: NodeSession,
        view: ProgressView,
        stop: threading.Event,
        on_stop: Callable[[Transport, NodePlan], None] | None,
    ) -> None:
        self.plan, self.session, self.view, self.stop, self.on_stop = (
            plan,
            session,
            view,
            stop,
            on_stop,
        )
        self.first = plan.nodes[0].node.name
        self.tail: list[str] = []
        self.offset, self.partial = 0, ""

    def follow(self, adoptee: Adoptee) -> Execution:
        job = self.plan.job
        started = adoptee.started_at or utcnow()
        t0 = time.monotonic() - max(0.0, (utcnow() - started).total_seconds())
        self.view.last_event_at = time.monotonic()
        while True:
            try:
                states = _states(self.session, self.plan, self.offset)
            except OrchestratorError as exc:
                return self._stop(started, Failure(f"lost the nodes: {exc.one_line()}"))
            self.read(states[self.first])
            self.view.tick()
            codes = {n: s.exit_code for n, s in states.items()}
            gone = [n for n, s in states.items() if s.exit_code is None and not s.alive]
            failed = [n for n, c in codes.items() if c not in (0, None)] + gone
            now = time.monotonic()
            if failed:
                return self._stop(started, self._diagnose(failed[0], codes[failed[0]]))
            if all(c == 0 for c in codes.values()):
                return Execution("succeeded", started, utcnow(), None, dict(codes))
            if self.stop.is_set():
                why = stop_reason(self.stop, "cancelled (the adopter was stopped)")
                return self._stop(started, Failure(why), "cancelled")
            quiet = now - self.view.last_event_at
            over = past_limits(job.timeout_s, job.no_progress_timeout_s, now - t0, quiet)
            if over is not None:
                return self._stop(started, over)
            self.stop.wait(POLL_S)

    def read(self, state: NodeState) -> None:
        """Rank 0's new log lines: the tail for diagnosis, events for the view."""
        self.offset = max(self.offset, state.log_size)
        *lines, self.partial = (self.partial + state.log).split("\n")
        for line in lines:
            self.tail = (self.tail + [line])[-TAIL_LINES:]
            event = parse_event(line)
            if event is not None:
                self.view.event(event)

    def _diagnose(self, node: str, code: int | None) -> Failure:
        if node == self.first:
            return diagnose(node, code, self.tail)
        log = next(n.log_path for n in self.plan.nodes if n.node.name == node)
        result = self.session.transports[node].run(
            ["tail", "-n", str(TAIL_LINES), "--", log], timeout=60, check=False
        )
        return diagnose(node, code, result.stdout.splitlines())

    def _stop(self, started: datetime, failure: Failure, status: Ending = "failed") -> Execution:
        stop_everywhere(self.session, self.plan, self.on_stop)
        return Execution(status, started, utcnow(), failure)


def reconcile(
    store: Store,
    holder: str,
    console: Console,
    runs_dir: Path,
    stop: threading.Event | None = None,
    *,
    ttl_s: float = leases.LEASE_TTL_S,
    mode: AdoptMode = "follow",
    run_id: str | None = None,
    why: str | None = None,
) -> list[str]:
    """Bring every run whose follower is gone to an end, in this thread (see the module's
    docstring for the modes); `settle` only takes runs whose grace has passed. Returns the
    runs ended."""
    release_final_leases(store)
    ended = []
    for orphan in find_orphans(store, "ssh", run_id=run_id):
        if mode == "settle" and not settle_due(orphan):
            continue
        status = adopt_run(
            store, orphan, holder, runs_dir, stop or threading.Event(), console, ttl_s, mode, why
        )
        if status is not None:
            ended.append(orphan.run_id)
    return ended


class Adopters(FollowerPool):
    """A worker's adoptions: each orphan still within its grace is followed in a thread of
    its own beside the queue (a worker busy with a long run must not let it die); an orphan
    past its grace is settled at once."""

    thread_name = "adopt"

    def __init__(
        self,
        store: Store,
        holder: str,
        runs_dir: Path,
        stop: threading.Event,
        console: Console,
        ttl_s: float,
    ) -> None:
        super().__init__(stop, console)
        self.store, self.holder, self.runs_dir, self.ttl_s = store, holder, runs_dir, ttl_s

    def poll(self) -> int:
        """Adopt what is orphaned now; returns how many runs were taken or ended."""
        release_final_leases(self.store)
        taken = 0
        for orphan in find_orphans(self.store, "ssh"):
            if self.following(orphan.run_id):
                continue
            if settle_due(orphan):
                settled = self.follow_here(orphan.run_id, partial(self._one, orphan, "settle"))
                taken += settled is not None
                continue
            self.follow_in_thread(orphan.run_id, partial(self._one, orphan, "follow"))
            taken += 1
        return taken

    def _one(self, orphan: Orphan, mode: AdoptMode) -> str | None:
        return adopt_run(
            self.store,
            orphan,
            self.holder,
            self.runs_dir,
            self.stop,
            self.console,
            self.ttl_s,
            mode,
        )


def watch(
    store: Store, run_id: str, console: Console, stop: threading.Event, every_s: float = POLL_S
) -> str:
    """Show a followed run's progress (rank 0's log) without taking it over, until it ends
    ('ended'), its follower is gone ('orphaned': adopt it then) or `stop` ('stopped'). Each
    read feeds the guards' heartbeat too: whoever watches adopts the run if its follower
    dies, so the guards must not end it meanwhile."""
    from orchestrator.transport import NodeSession

    with store.reading() as conn:
        state = follow_state(conn, run_id)
    if state is None:
        raise leases.QueueError(
            f"run {run_id} has no stored request (its submit predates adoption): "
            "nothing to attach to",
            "wait for its submit to end it, or `orchestrator cancel` it",
        )
    adoptee = load(store, state)
    rank0 = adoptee.plan.nodes[0]
    session = NodeSession([rank0.node], adoptee.plan.job.cluster.ssh)
    with session, ProgressView(run_id, console) as view:
        view.replay_from(adoptee.submitted_at)
        reader = Reattach(adoptee.plan, session, view, stop, None)
        transport = session.transports[rank0.node.name]
        waiting = _LeaseWait(view)
        while not stop.is_set():
            reader.read(node_state(transport, rank0, run_id, reader.offset))
            view.tick()
            with store.reading() as conn:
                status = run_status.status_of(conn, run_id)
                follower = follow_state(conn, run_id)
            if status != "running":
                return "ended"
            if find_orphans(store, "ssh", run_id=run_id):
                return "orphaned"
            if follower is not None:
                waiting.check(follower)
            stop.wait(every_s)
    return "stopped"
