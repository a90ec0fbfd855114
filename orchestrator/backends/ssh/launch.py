"""Executes a Plan on its nodes: stage, start torchrun everywhere at once, watch, stop
everything on any ending, collect the run folder. Side effects go through the transport layer;
the store is touched only by the caller (orchestrator.backends.ssh.submit)."""

from __future__ import annotations

import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from hashlib import sha256
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

from orchestrator import monitor
from orchestrator.backends.ssh.guard import run_env
from orchestrator.backends.ssh.hang import collect_stacks, dump_stacks
from orchestrator.clock import utcnow
from orchestrator.errors import NodeError
from orchestrator.plan import NCCL_LOG_DIR
from orchestrator.runfolder.folder import join_nccl_logs
from orchestrator.runs.ending import past_limits
from orchestrator.runs.failure import Failure, diagnose
from orchestrator.runs.progress import ProgressView, parse_event
from orchestrator.runs.stopping import stop_reason
from orchestrator.workload_source import workload_files

if TYPE_CHECKING:
    from orchestrator.backends.ssh.preflight import StagedWorkload
    from orchestrator.plan import NodePlan, Plan
    from orchestrator.transport import NodeSession, RemoteProcess, Transport

# How the watch of a run ended: a final status, or 'detached' (another follower took it over).
Ending = Literal["succeeded", "failed", "cancelled", "detached"]
POLL_S = 0.2
MONITOR_END_S = 1.0  # a stopped sampler's channel reports its end well within this
TAIL_LINES = 300  # enough to hold torchrun's whole failure summary
KILL_GRACE_S = 5.0
# A rank killed on one node (a signal: the OOM killer, a kill -9) breaks its peers' collectives
# at once, and their error can reach us first; its own torchrun notices the death at its next
# check (every 5 s in torch 2.0, 0.1 s later). A first failure that is no signal waits this
# long for a node whose rank died of one, the cause, while other nodes still run.
PEER_SIGNAL_WAIT_S = 6.0


def may_be_a_peer(
    failure: Failure, exits: dict[str, int | None], waited_s: float, stopping: bool
) -> bool:
    """Whether to wait for the other nodes before naming `failure` the cause: it is no signal,
    some node still runs, nobody asked to stop, and PEER_SIGNAL_WAIT_S has not passed."""
    running = any(code is None for code in exits.values())
    if failure.by_signal or not running or stopping:
        return False
    return waited_s < PEER_SIGNAL_WAIT_S


@dataclass
class Execution:
    status: Ending  # detached: another follower has the run
    started_at: datetime
    finished_at: datetime
    failure: Failure | None = None
    exit_codes: dict[str, int | None] = field(default_factory=dict)


# $1 the staged workload folder, $2 its manifest (`sha256sum` lines): succeeds only when the
# folder was completed and every file still has the content the manifest names. A `.complete`
# alone proves nothing about who wrote the files.
VERIFY_WORKLOAD_SCRIPT = """\
cd -- "$1" 2>/dev/null && [ -f .complete ] || exit 1
printf '%s\\n' "$2" | sha256sum -c - >/dev/null 2>&1
"""


def workload_manifest(files: list[tuple[str, Path]]) -> str:
    """`sha256sum` lines for the staged files (paths relative to the workload folder)."""
    return "\n".join(f"{sha256(local.read_bytes()).hexdigest()}  {rel}" for rel, local in files)


def staged_workloads(plan: Plan) -> dict[str, StagedWorkload]:
    """node -> the workload folder the host runtime stages there and its manifest, for the
    preflight probe to verify on its way (no round trip of its own); empty for containers."""
    if plan.runtime != "host":
        return {}
    manifest = workload_manifest(workload_files())
    return {
        np_.node.name: {"dir": np_.workload_dir, "manifest": manifest}
        for np_ in plan.nodes
        if np_.workload_dir is not None
    }


def stage(
    session: NodeSession, plan: Plan, timeout: float, verified: Collection[str] | None = None
) -> None:
    """Make the run folders; copy the workload source where the host runtime needs it. The
    workdir was found private in preflight; a staged copy is reused only if its files still
    hash to the source's: `verified` names the nodes where preflight's probe found them so
    (None: each node checks here, `VERIFY_WORKLOAD_SCRIPT`)."""
    by_node = {np_.node.name: np_ for np_ in plan.nodes}
    files = workload_files() if plan.runtime == "host" else []
    manifest = workload_manifest(files)

    def one(t: Transport) -> None:
        np_ = by_node[t.node.name]
        t.makedirs(np_.output_dir)
        t.makedirs(f"{np_.run_dir}/{NCCL_LOG_DIR}")  # NCCL_DEBUG_FILE's folder (plan.py)
        if np_.workload_dir is None:
            return
        if verified is not None:
            if t.node.name in verified:
                return  # content-addressed and verified by the probe: same hash, same files
        else:
            argv = ["sh", "-c", VERIFY_WORKLOAD_SCRIPT, "verify", np_.workload_dir, manifest]
            if t.run(argv, timeout=timeout, check=False).exit_code == 0:
                return  # content-addressed and verified: same hash, same files
        for rel, local in files:
            remote = str(PurePosixPath(np_.workload_dir) / rel)
            t.makedirs(str(PurePosixPath(remote).parent))
            t.put_file(local, remote)
        t.write_text(f"{np_.workload_dir}/.complete", manifest + "\n")

    session.fan_out(one, timeout=timeout, what="staging")


# Every process of a run carries ORCHESTRATOR_RUN_ID in its environment, inherited from the
# node command, including torchrun's workers, which torchrun starts in sessions of their own
# (so killing torchrun's process group alone would orphan them). TERM them all, wait up to
# $2 tenths of a second, KILL what is left. Zombies have an empty environ and do not match.
KILL_RUN_SCRIPT = """\
rid=$1; steps=$2
find_pids() {
  grep -lxzsF -- "ORCHESTRATOR_RUN_ID=$rid" /proc/[0-9]*/environ 2>/dev/null |
    sed -n 's#^/proc/\\([0-9][0-9]*\\)/environ$#\\1#p' | grep -vxF "$$"
}
pids=$(find_pids)
[ -z "$pids" ] && exit 0
kill -TERM $pids 2>/dev/null
i=0
while [ "$i" -lt "$steps" ]; do
  sleep 0.1
  pids=$(find_pids)
  [ -z "$pids" ] && exit 0
  i=$((i + 1))
done
kill -KILL $pids 2>/dev/null
sleep 0.2
[ -z "$(find_pids)" ]
"""


def _indices(np_: NodePlan) -> tuple[int, ...] | None:
    """The node's devices for its sampler: the run's ones only, when the plan chose them."""
    return np_.devices.indices if np_.devices else None


def kill_run_processes(transport: Transport, run_id: str, grace_s: float = KILL_GRACE_S) -> None:
    """End every process of the run on this node, whatever session it is in."""
    steps = str(max(1, int(grace_s * 10)))
    transport.run(["sh", "-c", KILL_RUN_SCRIPT, "sh", run_id, steps], timeout=grace_s + 30)


class Watch:
    """Starts every node's command and follows it to an ending; stops all nodes on any failure."""

    def __init__(
        self,
        plan: Plan,
        session: NodeSession,
        view: ProgressView,
        stop: threading.Event,
        on_stop: Callable[[Transport, NodePlan], None] | None = None,
        detach: threading.Event | None = None,
        self_cleaning: bool = False,
    ) -> None:
        self.plan, self.session, self.view, self.stop = plan, session, view, stop
        # the plan's node commands stop the rest of the run themselves (guard.with_guards)
        self.self_cleaning = self_cleaning
        self.on_stop = on_stop  # e.g. remove the run's containers on that node
        self.detach = detach  # set: another follower took the run over; leave it running
        self.procs: dict[str, RemoteProcess] = {}
        self.monitors: dict[str, RemoteProcess] = {}  # the sampler next to each node's workload
        self.tails: dict[str, deque[str]] = {
            n.node.name: deque(maxlen=TAIL_LINES) for n in plan.nodes
        }
        self.by_node = {np_.node.name: np_ for np_ in plan.nodes}
        self.ended_at: float | None = None  # time.monotonic() when follow saw the ending
        self._lock = threading.Lock()  # monitors and the samplers being started
        self._samplers_starting: list[threading.Thread] = []

    def start(self, timeout: float) -> None:
        """Every node's workload, then its sampler beside it. The sampler starts in the
        background once its node's workload has: it is not on the start's path (its command
        would compete with the workload's for the node's CPU), and it misses only the first
        moments of the workload's imports. Should any node's workload not start, every node
        is stopped (samplers included)."""

        def one(t: Transport) -> RemoteProcess:
            np_ = self.by_node[t.node.name]
            proc = t.spawn(list(np_.argv), env=np_.env_dict, cwd=np_.run_dir, log_path=np_.log_path)
            sampler = threading.Thread(
                target=self._start_monitor, args=(t,), name=f"monitor-{t.node.name}", daemon=True
            )
            with self._lock:
                self._samplers_starting.append(sampler)
            sampler.start()
            return proc

        started = self.session.fan_out_results(one, timeout=timeout, what="start")
        self.procs = dict(started.succeeded)
        if not started.ok():
            self.stop_all()
            from orchestrator.errors import NodeError

            failed = {n: str(e) for n, e in started.failed.items()}
            raise NodeError("could not start the workload", failed)

    def _samplers_started(self) -> None:
        """Wait for the samplers still being started (each spawn has its own time limit), so
        that no sampler starts after a stop."""
        with self._lock:
            starting, self._samplers_starting = self._samplers_starting, []
        for sampler in starting:
            sampler.join()

    def _start_monitor(self, t: Transport) -> None:
        """The node's sampler, with the run's id in its environment so that every stop ends
        it. A sampler that cannot start costs the run its series on that node, nothing more."""
        np_ = self.by_node[t.node.name]
        tool = [self.plan.monitor_tool] if self.plan.monitor_tool else []
        bmc_power = self.plan.job.cluster.readings.bmc_power  # [energy] bmc_power
        python = "python3" if self.plan.runtime == "docker" else np_.node.python
        out = f"{np_.run_dir}/{monitor.MONITOR_FILE}"
        try:
            proc = t.spawn(
                monitor.sampler_argv(
                    python, tool, out, monitor.interval_s(), _indices(np_), bmc_power
                ),
                env=run_env(self.plan.job.run_id, np_.node.name, "monitor"),
                cwd=np_.run_dir,
                log_path=f"{np_.run_dir}/{monitor.MONITOR_LOG}",
            )
        except Exception:  # the missing series says it, as before
            return
        with self._lock:
            self.monitors[t.node.name] = proc

    def stop_monitors(self) -> None:
        if not self.monitors:
            return

        def one(t: Transport) -> None:
            proc = self.monitors.get(t.node.name)
            # The run-id stop has ended it: its end is seen in moments, without a command
            if proc is not None and proc.wait(MONITOR_END_S) is None:
                proc.kill_tree(grace_s=2.0)

        self.session.fan_out_results(one, timeout=KILL_GRACE_S + 30, what="stop monitors")

    def _drain(self, name: str, proc: RemoteProcess, wait: float) -> None:
        first = self.plan.nodes[0].node.name
        for line in proc.lines(wait):
            self.tails[name].append(line)
            if name == first:
                event = parse_event(line)
                if event is not None:
                    self.view.event(event)

    def follow(self, timeout_s: float | None, no_progress_s: float | None) -> Execution:
        started = utcnow()
        t0 = time.monotonic()
        self.view.last_event_at = t0
        exits: dict[str, int | None] = {n: None for n in self.procs}
        order: list[str] = []  # nodes in the order their exit was seen
        first_failed_at: float | None = None
        while True:
            names = list(self.procs)
            for i, name in enumerate(names):
                self._drain(name, self.procs[name], POLL_S if i == 0 else 0.0)
            for name, proc in self.procs.items():
                if exits[name] is None:
                    code = proc.poll()
                    if code is not None:
                        exits[name] = code
                        order.append(name)
                        self._drain(name, proc, 0.0)
            self.view.tick()
            failed = [n for n in order if exits[n] != 0]
            now = time.monotonic()
            failure = None
            status: Ending = "failed"
            if failed:
                first_failed_at = first_failed_at or now
                failure = self._first_failure(failed, exits)
                if may_be_a_peer(failure, exits, now - first_failed_at, self.stop.is_set()):
                    continue
            elif all(code == 0 for code in exits.values()):
                self.ended_at = time.monotonic()
                self.finish()
                return Execution("succeeded", started, utcnow(), None, exits)
            elif self.detach is not None and self.detach.is_set():
                return Execution("detached", started, utcnow(), None, exits)
            elif self.stop.is_set():
                status, failure = "cancelled", Failure(stop_reason(self.stop))
            else:
                failure = past_limits(
                    timeout_s, no_progress_s, now - t0, now - self.view.last_event_at
                )
            if failure is not None:
                self.ended_at = time.monotonic()
                if status == "failed" and any(c is None for c in exits.values()):
                    failure = dump_stacks(self.session, self.plan, failure)  # ranks still live
                self.stop_all()
                for name, proc in self.procs.items():
                    if exits[name] is None:
                        exits[name] = proc.poll()
                return Execution(status, started, utcnow(), failure, exits)

    def _first_failure(self, failed: list[str], exits: dict[str, int | None]) -> Failure:
        # Peers of a dead rank fail too, moments later: the first exit seen is the cause; among
        # the exits seen (within PEER_SIGNAL_WAIT_S), a signal (negative exit code in torchrun's
        # summary) wins.
        diagnosed = [diagnose(n, exits[n], list(self.tails[n])) for n in failed]
        first = diagnosed[0]
        for f in diagnosed[1:]:
            if f.by_signal and not first.by_signal:
                first = f
                break
        return first

    def finish(self) -> None:
        """After a succeeded run: where every node's start command has stopped the rest of
        the run itself, only the samplers' ends are awaited (no command on the nodes); else,
        or when a sampler is still running, the samplers and guards are stopped."""
        self._samplers_started()
        if self.self_cleaning and self.on_stop is None and self._samplers_ended(MONITOR_END_S):
            return
        self.stop_all()

    def _samplers_ended(self, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        try:
            return all(
                proc.wait(max(0.0, deadline - time.monotonic())) is not None
                for proc in self.monitors.values()
            )
        except NodeError:  # a node lost at the end: the stop command says what is left
            return False

    def stop_all(self) -> None:
        """TERM then KILL every node's process group; then the runtime's own cleanup."""
        self._samplers_started()
        stop_everywhere(self.session, self.plan, self.on_stop, self.procs)
        self.stop_monitors()  # already ended by the run-id kill; this reaps the spawned groups


def stop_everywhere(
    session: NodeSession,
    plan: Plan,
    on_stop: Callable[[Transport, NodePlan], None] | None = None,
    procs: Mapping[str, RemoteProcess] | None = None,
) -> dict[str, str]:
    """End every process of the run on every node (and the group we spawned, if we hold it),
    then the runtime's own cleanup (containers). Returns node -> problem for nodes not done."""
    by_node = {np_.node.name: np_ for np_ in plan.nodes}

    def one(t: Transport) -> None:
        kill_run_processes(t, plan.job.run_id)
        proc = (procs or {}).get(t.node.name)
        if proc is not None and proc.poll() is None:  # an ended group's rest had the run id
            proc.kill_tree(grace_s=KILL_GRACE_S)
        if on_stop is not None:
            on_stop(t, by_node[t.node.name])

    stopped = session.fan_out_results(one, timeout=KILL_GRACE_S + 60, what="stop")
    return {n: str(e) for n, e in stopped.failed.items()}


def collect(session: NodeSession, plan: Plan, local_dir: Path, timeout: float) -> dict[str, str]:
    """Fetch rank files, logs and monitor samples from every node into the local run folder, then remove the
    node's run folder. Returns per-node problems (a failed run may lack files)."""
    by_node = {np_.node.name: np_ for np_ in plan.nodes}
    (local_dir / "ranks").mkdir(parents=True, exist_ok=True)
    (local_dir / "logs").mkdir(parents=True, exist_ok=True)

    def one(t: Transport) -> None:
        np_ = by_node[t.node.name]
        skipped = (
            t.get_tree(np_.output_dir, local_dir / "ranks") if t.exists(np_.output_dir) else []
        )
        if t.exists(np_.log_path):
            t.get_file(np_.log_path, local_dir / "logs" / f"{t.node.name}.log")
        node_dir = local_dir / "nodes" / t.node.name
        samples = f"{np_.run_dir}/{monitor.MONITOR_FILE}"
        if t.exists(samples):
            node_dir.mkdir(parents=True, exist_ok=True)
            t.get_file(samples, node_dir / monitor.MONITOR_FILE)
        nccl = f"{np_.run_dir}/{NCCL_LOG_DIR}"
        if t.exists(nccl):  # the ranks' NCCL lines, one file per process -> nccl.log
            t.get_tree(nccl, node_dir / NCCL_LOG_DIR)
            join_nccl_logs(sorted((node_dir / NCCL_LOG_DIR).glob("*.log")), node_dir)
            shutil.rmtree(node_dir / NCCL_LOG_DIR, ignore_errors=True)
        collect_stacks(t, np_.run_dir, local_dir)
        try:  # over the open SFTP session: no command (and no login shell) on the node
            t.remove_tree(np_.run_dir)
        except NodeError:
            pass  # as `rm -rf` before: what could not be removed stays, the results are here
        if skipped:  # a link or a strange name in a run folder: say so, it is not a result
            raise NodeError(
                "collecting left files out",
                {t.node.name: f"left out of ranks/: {'; '.join(skipped)}"},
                "rank files are regular files; look for what else wrote into the run folder",
            )

    collected = session.fan_out_results(one, timeout=timeout, what="collect")
    return {n: str(e) for n, e in collected.failed.items()}
