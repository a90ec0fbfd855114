"""One run on the Slurm backend: plan -> run row (queued) -> stage on the shared file system ->
sbatch -> follow the job (pending reason, running, rank 0's progress) -> collect -> publish.
Ctrl-C, a timeout or `cancel_run` call scancel; every ending leaves the row final, the run
folder written, and the job gone from the controller."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.backends.slurm import commands, follows, nodelocal
from orchestrator.backends.slurm.private import require_private_dir, write_private
from orchestrator.backends.slurm.script import (
    EXIT_FILE,
    JOB_OUTPUT,
    MONITOR_PROBE_FILE,
    NODELIST_FILE,
    PROBE_CHECK_FILE,
    PROBE_FILE,
    NodeSlot,
    SlurmPlan,
    build_slurm_plan,
)
from orchestrator.clock import utcnow
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.monitor import MONITOR_FILE
from orchestrator.pathnames import copy_regular, is_safe_name
from orchestrator.plan import NCCL_LOG_DIR
from orchestrator.queue import leases
from orchestrator.queue.keeper import LeaseKeeper, default_worker_id
from orchestrator.runs.failure import Failure, diagnose
from orchestrator.runs.folder import ImageRef, NodeRef, RunManifest, join_nccl_logs, make_run_dir
from orchestrator.runs.lifecycle import (
    Outcome,
    PhaseClock,
    SubmitRequest,
    job_for,
    manifest_for,
    publish_run,
    write_json,
)
from orchestrator.runs.progress import ProgressView, parse_event
from orchestrator.runs.stopping import StopEvent, stop_reason
from orchestrator.slurm_settings import SlurmSettings
from orchestrator.specs import ClusterSpec
from orchestrator.states import FinalStatus, RunStatus
from orchestrator.workload_source import (
    MONITOR_PROBE_PATH,
    NODE_PROBE_PATH,
    PROBE_CHECK_PATH,
    workload_files,
    workload_hash,
)

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.store import Store

FINAL_WAIT_S = 120.0  # after scancel: how long the job may take to leave the controller
STATE_RETRY_S = 300.0  # how long Slurm's commands may fail before a followed run fails
FETCHED_DIR = ".fetched"  # node_dir sites: the nodes' run folders, fetched into the run folder
FOLLOW_TTL_ENV = "ORCHESTRATOR_FOLLOW_TTL_S"  # a foreground submit's follow row (tests: short)


def follow_ttl_s() -> float:
    try:
        value = float(os.environ.get(FOLLOW_TTL_ENV) or 60.0)
    except ValueError:
        value = 60.0
    return value if value >= 3 else 60.0


def settings_of(cluster: ClusterSpec) -> SlurmSettings:
    return cluster.slurm or SlurmSettings()


def make_slurm_plan(
    cluster: ClusterSpec, req: SubmitRequest, run_id: str | None = None
) -> SlurmPlan:
    from orchestrator.images.profiles import load_profile

    if req.node_names:
        raise ConfigError(
            "--nodes does not apply to the slurm backend", "Slurm chooses the nodes; drop --nodes"
        )
    job = job_for(cluster, req, (), run_id)
    profile = load_profile(cluster.vendor)
    runtime = profile.runtime
    return build_slurm_plan(
        job,
        settings_of(cluster),
        workload_hash=workload_hash(),
        vendor_env=runtime.env,
        master_port=cluster.master_port,
        hardware_label=profile.label,
        monitor_tool=runtime.monitor[0] if runtime.monitor else None,
        archive_b64=_workload_archive() if settings_of(cluster).fetch else None,
    )


def _helpers() -> tuple[tuple[Path, str], ...]:
    """The node-side helpers staged beside the workload source (not in its hash)."""
    return (
        (NODE_PROBE_PATH, PROBE_FILE),
        (PROBE_CHECK_PATH, PROBE_CHECK_FILE),
        (MONITOR_PROBE_PATH, MONITOR_PROBE_FILE),
    )


def _workload_archive() -> str:
    """The workload source and the helpers as base64 tar.gz, for a script that carries them
    (node_dir sites). Fixed mtimes: the same source gives the same script."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        for rel, local in [*workload_files(), *((name, p) for p, name in _helpers())]:
            data = Path(local).read_bytes()
            info = tarfile.TarInfo(str(rel))
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def _placeholders(plan: SlurmPlan) -> tuple[NodeSlot, ...]:
    """Before Slurm places the job its nodes are unknown; the row still lists nnodes."""
    return tuple(
        NodeSlot(f"unallocated-{i}", "unallocated", i) for i in range(plan.job.topology.nnodes)
    )


def slurm_manifest(
    plan: SlurmPlan, req: SubmitRequest, status: RunStatus, job_id: str | None, **extra: Any
) -> RunManifest:
    """The run's manifest: backend slurm, its job id, the allocation (placeholders before)."""
    return manifest_for(
        plan.job,
        req,
        status,
        backend="slurm",
        runtime=plan.runtime,
        nodes=[NodeRef(s.name, s.address, s.node_rank) for s in plan.nodes or _placeholders(plan)],
        image=ImageRef(plan.image, plan.image_id) if plan.image else None,
        hardware_label=plan.hardware_label,
        slurm_job_id=job_id,
        **extra,
    )


def stage(plan: SlurmPlan) -> None:
    """The run folder and the content-addressed workload source (plus the probe) on the
    shared file system, and the script. A node_dir site: only the script, here (it carries
    the workload). Either folder must be one only the user can write (ConfigError if not):
    sbatch and every node run what is there."""
    if plan.settings.fetch:
        require_private_dir(plan.settings.script_dir, "the Slurm script folder")
    else:
        require_private_dir(plan.settings.shared_dir, "slurm.shared_dir")
    try:
        if plan.settings.fetch:
            write_private(Path(plan.script_path), plan.script)
            return
        _stage(plan)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the run to slurm.shared_dir {plan.settings.shared_dir}: {exc}",
            "shared_dir must be writable from here and mounted at the same path on every node",
        ) from None


def submit_staged(plan: SlurmPlan, argv: tuple[str, ...]) -> str:
    """sbatch the staged script. A node_dir site's script is removed once sbatch has read it
    (Slurm keeps its own copy): the private script folder does not fill up."""
    try:
        return commands.sbatch(plan.script_path, argv)
    finally:
        if plan.local_script:
            Path(plan.local_script).unlink(missing_ok=True)


def _stage(plan: SlurmPlan) -> None:
    run_dir = Path(plan.run_dir)
    for sub in ("ranks", "logs", "nodes"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    workload = Path(plan.workload_dir)
    files = workload_files()
    if not _staged_intact(workload, files):
        for rel, local in files:
            (workload / rel).parent.mkdir(parents=True, exist_ok=True)
            _write_if_changed(workload / rel, local.read_bytes())
        (workload / ".complete").write_text("")
    # The node-side helpers are not in the workload hash: refresh them every time.
    for source, name in _helpers():
        _write_if_changed(workload / name, source.read_bytes())
    write_private(Path(plan.script_path), plan.script)


def _staged_intact(workload: Path, files: list[tuple[str, Path]]) -> bool:
    """A staged copy is reused only when completed and every file is the source's, byte for
    byte (a `.complete` alone proves nothing about who wrote the files)."""
    try:
        return (workload / ".complete").is_file() and all(
            (workload / rel).read_bytes() == local.read_bytes() for rel, local in files
        )
    except OSError:
        return False


def _write_if_changed(path: Path, data: bytes) -> None:
    """Replace the file atomically when its content differs (jobs may be reading it)."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # O_EXCL, unguessable
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class _Follower:
    """Polls the job; tails rank 0's log into the progress view."""

    def __init__(self, plan: SlurmPlan, job_id: str, console: Console) -> None:
        self.plan, self.job_id, self.console = plan, job_id, console
        self.offset = 0
        self.partial = ""
        self.last_reason: str | None = None

    def tail(self, view: ProgressView) -> None:
        path = Path(self.plan.rank0_log())
        try:
            with path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return
        self.offset += len(data)
        text = self.partial + data.decode("utf-8", "replace")
        *lines, self.partial = text.split("\n")
        for line in lines:
            event = parse_event(line)
            if event:
                view.event(event)

    def pending(self, state: commands.JobState, view: ProgressView) -> None:
        if state.reason != self.last_reason:
            self.last_reason = state.reason
            view.phase(
                "queued", f"slurm job {self.job_id} pending: {state.reason or 'no reason given'}"
            )


def _wait_final(
    job_id: str, interval: float, timeout: float = FINAL_WAIT_S
) -> commands.JobState | None:
    deadline = time.monotonic() + timeout
    state = commands.job_state(job_id)
    while state is not None and not state.final and time.monotonic() < deadline:
        time.sleep(interval)
        state = commands.job_state(job_id)
    return state


def execute(
    plan: SlurmPlan,
    req: SubmitRequest,
    store: Store,
    runs_dir: Path,
    stop: threading.Event,
    console: Console,
) -> Outcome:
    """Run the plan through Slurm; the row and folder are final whatever happens."""
    job = plan.job
    run_dir = runs_dir / job.run_id
    make_run_dir(run_dir, exist_ok=False)
    submitted_at = utcnow()
    # "running" from the orchestrator's side, as for `submit` over SSH: "queued" belongs to the
    # worker queue (issue 6), which must not claim a run Slurm is queueing. started_at is
    # stamped when Slurm starts the job.
    store.create_run(
        slurm_manifest(plan, req, "running", None, submitted_at=submitted_at), status="running"
    )
    phases = PhaseClock()
    job_id: str | None = None
    holder, ttl_s = f"submit {default_worker_id()}", follow_ttl_s()
    view = ProgressView(job.run_id, console, live=True)
    try:
        view.phase("staging", f"run folder and workload source in {plan.settings.shared_dir}")
        stage(plan)
        phases.lap("stage")
        if stop.is_set():
            raise _Cancelled(f"{stop_reason(stop)} before the job was submitted")
        view.phase("submitting", f"sbatch, {job.topology.nnodes} node(s)")
        job_id = submit_staged(plan, plan.sbatch_argv)
        request = leases.request_for(job.cluster, req)
        follows.record_followed(store, job.run_id, job_id, request, holder, ttl_s)
        view.phase("submitted", f"slurm job {job_id}")
        phases.lap("submit")
    except (_Cancelled, OrchestratorError) as exc:
        status: FinalStatus = "cancelled" if isinstance(exc, _Cancelled) else "failed"
        why = Failure(str(exc) if isinstance(exc, _Cancelled) else exc.one_line())
        if job_id is not None:  # submitted but not recorded: nobody would follow it
            commands.scancel_quietly(job_id)
        shutil.rmtree(plan.run_dir, ignore_errors=True)
        ending = _Ending(status, why)
        return _finalize(plan, req, run_dir, store, ending, submitted_at, None, job_id)
    except BaseException as exc:
        if job_id is not None:
            commands.scancel_quietly(job_id)
        ending = _Ending("failed", Failure(f"internal error: {exc!r}"))
        _finalize(plan, req, run_dir, store, ending, submitted_at, None, job_id)
        raise
    # Like a worker, this process holds a follow row while it follows the job: if it dies, the
    # row expires and a worker adopts the run, collects and stores it.
    cancel, detach = StopEvent(), threading.Event()
    keeper = LeaseKeeper(
        store, job.run_id, holder, ttl_s, stop, cancel, renew=follows.renew, on_lost=detach
    )
    try:
        with keeper:
            outcome = follow(
                plan, req, store, run_dir, job_id, submitted_at, None, cancel, console, phases,
                detach=detach, live=True, view=view,
            )  # fmt: skip
    finally:
        follows.release(store, job.run_id, holder)
    if outcome is None:
        raise commands.SlurmError(
            f"run {job.run_id}: another process follows slurm job {job_id} now (this submit "
            "stopped renewing its follow); it stores the run",
            "`orchestrator queue` shows who follows it",
        )
    return outcome


@dataclass
class _Ending:
    status: FinalStatus
    failure: Failure | None


def follow(
    plan: SlurmPlan,
    req: SubmitRequest,
    store: Store,
    run_dir: Path,
    job_id: str,
    submitted_at: datetime,
    started_at: datetime | None,
    stop: threading.Event,
    console: Console,
    phases: PhaseClock | None = None,
    detach: threading.Event | None = None,
    live: bool = False,
    states: Callable[[str], commands.JobState | None] = commands.job_state,
    view: ProgressView | None = None,
) -> Outcome | None:
    """Follow a submitted job to its end, then collect and publish the run. `stop` cancels the
    job (scancel); `detach` stops following and leaves the job to Slurm (a worker that stops,
    or one whose follow was taken over): returns None then, and the run stays `running` for
    the next follower. `--timeout` counts from the job's start: time waiting in Slurm's queue
    is Slurm's business (its time_limit bounds the run too)."""
    job = plan.job
    phases = phases or PhaseClock()
    make_run_dir(run_dir, exist_ok=True)
    interval = plan.settings.poll_interval_s
    failure: Failure | None = None
    status: FinalStatus = "failed"
    failing_since: float | None = None
    # Where the job's run folder is read from: the shared folder, or (node_dir sites) what was
    # fetched from the nodes into the local run folder.
    source = run_dir / FETCHED_DIR if plan.settings.fetch else Path(plan.run_dir)
    fetch_problem: str | None = None
    try:
        follower = _Follower(plan, job_id, console)
        state: commands.JobState | None = None
        view = view or ProgressView(job.run_id, console, live=live)
        with view:
            while True:
                if detach is not None and detach.is_set():
                    return None
                try:
                    state = states(job_id) or _state_from_exit_file(plan, job_id, source)
                except commands.SlurmError as exc:
                    # slurmctld restarting must not fail a run that Slurm still runs
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since > STATE_RETRY_S:
                        raise
                    console.print(f"[yellow]slurm job {job_id}: {exc.one_line()}; retrying[/]")
                    time.sleep(max(interval, 5.0))
                    continue
                failing_since = None
                if state is not None and state.comment == nodelocal.READY and not source.exists():
                    fetch_problem = _fetch(plan, job_id, source, console)
                if state is None:
                    if stop.is_set():
                        status, failure = "cancelled", Failure(f"{stop_reason(stop)} (scancel)")
                    else:
                        failure = Failure(f"slurm job {job_id} vanished from the controller")
                    break
                if state.run_status == "queued":
                    follower.pending(state, view)
                elif started_at is None and (
                    state.run_status == "running" or (state.final and state.node_list)
                ):
                    started_at = utcnow()
                    phases.lap("queue")
                    store.set_status(
                        job.run_id, "running", reason=f"slurm job {job_id} on {state.node_list}"
                    )
                    view.last_event_at = time.monotonic()
                    view.phase(
                        "preflight",
                        f"slurm job {job_id} running on {state.node_list}: the nodes' checks "
                        "(the job's first step)",
                    )
                if started_at is not None:
                    follower.tail(view)
                view.tick()
                if state.final:
                    break
                why = _why_stop(job, stop, started_at, view.last_event_at)
                if why is not None:
                    if stop.is_set():
                        status = "cancelled"
                    commands.scancel(job_id)
                    state = _wait_final(job_id, interval)
                    failure = why
                    break
                time.sleep(interval)
            if started_at is not None:
                follower.tail(view)
            view.phase("collecting", "rank files, logs and environments of the job")
        phases.lap("workload")
        if state is not None and state.final and state.node_list and not plan.nodes:
            plan = replace(plan, nodes=_allocated(plan, source))
        if plan.settings.fetch and not source.exists() and fetch_problem is None:
            fetch_problem = (
                "the run folders were not fetched from the nodes before the job ended (a node_dir "
                "site needs a follower while the job ends: its submit, or a worker)"
            )
        collect_problems = _collect(plan, run_dir, store, source)
        if fetch_problem:
            collect_problems = "; ".join(p for p in (fetch_problem, collect_problems) if p)
        phases.lap("collect")
        if failure is None and state is not None:
            status, failure = _ending(plan, state, run_dir)
            if status == "succeeded" and collect_problems:
                status, failure = "failed", Failure("collection failed: " + collect_problems)
    except OrchestratorError as exc:
        failure = Failure(exc.one_line())
    except BaseException as exc:
        commands.scancel_quietly(job_id)
        ending = _Ending("failed", Failure(f"internal error: {exc!r}"))
        _finalize(plan, req, run_dir, store, ending, submitted_at, started_at, job_id)
        raise
    ending = _Ending(status, failure)
    if view is not None:
        view.phase("publishing", "into the results store")
    outcome = _finalize(plan, req, run_dir, store, ending, submitted_at, started_at, job_id)
    phases.lap("publish")
    write_json(run_dir / "timings.json", phases.as_dict())
    return outcome


def _why_stop(
    job: Any, stop: threading.Event, started_at: datetime | None, last_event_at: float
) -> Failure | None:
    """Why the orchestrator ends the job now (cancel, timeout, no progress), or None."""
    if stop.is_set():
        return Failure(f"{stop_reason(stop)} (scancel)")
    if started_at is None:
        return None
    ran_s = (utcnow() - started_at).total_seconds()
    if job.timeout_s is not None and ran_s > job.timeout_s:
        return Failure(f"timed out after {job.timeout_s:g}s (scancel)")
    quiet_s = time.monotonic() - last_event_at
    if job.no_progress_timeout_s is not None and quiet_s > job.no_progress_timeout_s:
        return Failure(f"no progress for {job.no_progress_timeout_s:g}s (scancel)")
    return None


class _Cancelled(Exception):
    pass


def _fetch(plan: SlurmPlan, job_id: str, into: Path, console: Console) -> str | None:
    """node_dir sites: every node's run folder, fetched through the running job, unpacked
    into one local folder (which exists afterwards, whatever happened: fetched once); then
    tell the batch shell it may end. Returns a problem, or None."""
    console.print(f"[dim]slurm job {job_id}: fetching the run folders from the nodes[/]")
    problem = None
    try:
        archives = commands.fetch_folders(job_id, plan.job.topology.nnodes, plan.run_dir)
        into.mkdir(parents=True)
        for data in archives.values():
            _extract(data, into)
        if len(archives) != plan.job.topology.nnodes:
            problem = f"fetched {len(archives)} of {plan.job.topology.nnodes} nodes' run folders"
    except (OrchestratorError, OSError, tarfile.TarError, ValueError) as exc:
        problem = f"fetching the run folders failed: {exc}"
        into.mkdir(parents=True, exist_ok=True)
    try:
        commands.set_comment(job_id, nodelocal.FETCHED)
    except OrchestratorError as exc:
        problem = problem or exc.one_line()
    return problem


def _extract(data: bytes, into: Path) -> None:
    """Unpack a fetched archive: plain files and folders inside `into` only."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            target = (into / m.name).resolve()
            if not (m.isfile() or m.isdir()) or not target.is_relative_to(into.resolve()):
                raise ValueError(f"refusing archive member {m.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, members, filter="data")
        else:  # Python < 3.10.12: the members were checked above
            tar.extractall(into, members)


def _state_from_exit_file(plan: SlurmPlan, job_id: str, source: Path) -> commands.JobState | None:
    """The job's ending from the exit status its batch shell wrote, once neither the controller
    nor accounting knows the job (a worker adopting a run long after its job ended)."""
    try:
        text = Path(source, EXIT_FILE).read_text().strip()
    except OSError:
        return None
    code = int(text) if text.lstrip("-").isdigit() else 1
    nodes = ",".join(slot.name for slot in _allocated(plan, source)) or None
    return commands.JobState(
        job_id,
        "COMPLETED" if code == 0 else "FAILED",
        "Slurm no longer knows the job; its batch shell's exit status",
        f"{code}:0",
        nodes,
    )


def _allocated(plan: SlurmPlan, source: Path) -> tuple[NodeSlot, ...]:
    """The allocation as the batch script wrote it (node rank = line number)."""
    try:
        names = Path(source, NODELIST_FILE).read_text().split()
    except OSError:
        return ()
    if len(names) != plan.job.topology.nnodes or not all(map(is_safe_name, names)):
        return ()  # a name that is not a safe path part never names a file here
    return tuple(NodeSlot(name, name, i) for i, name in enumerate(names))


def _collect(plan: SlurmPlan, run_dir: Path, store: Store, shared: Path) -> str:
    """Copy ranks, logs and the nodes' environments from the job's run folder (shared, or
    fetched from the nodes), record the environments, then remove that folder. Returns a
    problem, or ''."""
    problems = []
    (run_dir / "ranks").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    left_out: list[str] = []

    def copy(source: Path, target: Path) -> None:
        # Regular files inside the job's folder only: the job wrote it, links are not followed.
        if source.exists() or source.is_symlink():
            if not copy_regular(source, target, inside=shared):
                left_out.append(str(source.relative_to(shared)))

    try:
        for rank_file in sorted((shared / "ranks").glob("rank-*.json")):
            copy(rank_file, run_dir / "ranks" / rank_file.name)
        copies = (
            (JOB_OUTPUT, "slurm-job.log"),
            ("job.sbatch", "job.sbatch"),
            (EXIT_FILE, EXIT_FILE),
        )
        for extra, name in copies:
            copy(shared / extra, run_dir / "logs" / name)
        for slot in plan.nodes:
            copy(
                shared / "logs" / f"node-{slot.node_rank}.log",
                run_dir / "logs" / f"{slot.name}.log",
            )
            # NCCL_DEBUG_FILE's %h is the short host name, which Slurm's node names are; only
            # regular files are joined (a link there is no NCCL log)
            nccl = sorted(
                p
                for p in (shared / NCCL_LOG_DIR).glob(f"{slot.name.split('.')[0]}.*.log")
                if p.is_file() and not p.is_symlink()
            )
            join_nccl_logs(nccl, run_dir / "nodes" / slot.name)
            samples = shared / "nodes" / f"monitor-{slot.node_rank}.jsonl"
            if samples.exists():
                (run_dir / "nodes" / slot.name).mkdir(parents=True, exist_ok=True)
                copy(samples, run_dir / "nodes" / slot.name / MONITOR_FILE)
            probe = shared / "nodes" / f"probe-{slot.node_rank}.json"
            if probe.is_file() and not probe.is_symlink():
                data = json.loads(probe.read_text().strip().splitlines()[-1])
                env = dict(data.get("env", {}))
                env["preflight"] = data.get("checks", [])
                store.record_environment(plan.job.run_id, slot.name, slot.node_rank, env)
                write_json(run_dir / "nodes" / slot.name / "env.json", env)
    except (OSError, ValueError) as exc:
        problems.append(str(exc))
    if left_out:
        problems.append(f"left out (not regular files in the job's folder): {', '.join(left_out)}")
    shutil.rmtree(shared, ignore_errors=True)
    return "; ".join(problems)


def _ending(
    plan: SlurmPlan, state: commands.JobState, run_dir: Path
) -> tuple[FinalStatus, Failure | None]:
    """Slurm's final state -> (status, failure), naming the failing node and rank when the
    node logs say which."""
    status = state.run_status
    if status == "succeeded":
        return "succeeded", None
    where = f"slurm job {state.job_id} ended {state.state}"
    if state.reason:
        where += f" ({state.reason})"
    if status == "cancelled":
        return "cancelled", Failure(f"{where}: scancel (`orchestrator cancel` or by hand)")
    exit_code = None
    if state.exit_code:
        try:
            exit_code = int(state.exit_code.split(":")[0])
        except ValueError:
            pass
    job_log = run_dir / "logs" / "slurm-job.log"
    job_text = job_log.read_text(errors="replace") if job_log.exists() else ""
    preflight = [ln for ln in job_text.splitlines() if ln.startswith("preflight failed:")]
    if preflight:
        names = {f"probe-{s.node_rank}.json": s.name for s in plan.nodes}
        details = []
        for line in preflight:
            file, _, detail = line.removeprefix("preflight failed: ").partition(": ")
            details.append(f"{names.get(file, file)}: {detail}")
        return "failed", Failure(
            f"preflight failed, torchrun not started: {'; '.join(details)} [{where}]"[:500],
            node=names.get(preflight[0].removeprefix("preflight failed: ").split(": ")[0]),
            exit_code=exit_code,
        )
    for slot in plan.nodes:
        log = run_dir / "logs" / f"{slot.name}.log"
        if not log.exists():
            continue
        tail = log.read_text(errors="replace").splitlines()[-200:]
        if any("Root Cause" in ln for ln in tail):
            found = diagnose(slot.name, exit_code, tail)
            return "failed", replace(found, reason=f"{found.reason} [{where}]"[:500])
    if not job_text and not plan.nodes and not plan.settings.fetch:
        where += (
            f"; the job wrote nothing to {plan.run_dir}: is slurm.shared_dir mounted at the same "
            "path on every node?"
        )
    return "failed", Failure(where, exit_code=exit_code, log_tail=job_text[-4000:])


def _finalize(
    plan: SlurmPlan,
    req: SubmitRequest,
    run_dir: Path,
    store: Store,
    ending: _Ending,
    submitted_at: datetime,
    started_at: datetime | None,
    job_id: str | None,
) -> Outcome:
    """Write the final manifest (with the Slurm job id and the allocation's nodes) and publish."""
    failure = ending.failure
    manifest = slurm_manifest(
        plan,
        req,
        ending.status,
        job_id,
        submitted_at=submitted_at,
        started_at=started_at,
        finished_at=utcnow(),
        failure=failure.as_dict() if failure else None,
    )
    return publish_run(manifest, run_dir, store, failure)


def cancel_run(store: Store, run_id: str, by: str) -> str:
    """`orchestrator cancel` for a Slurm run: record the request, then scancel its job; whoever
    follows the job (its `submit`, or a worker) sees it end and finalizes the run. Returns the
    job id."""
    from sqlalchemy import select

    from orchestrator.store.models import Run

    with store.reading() as conn:
        row = conn.execute(select(Run.slurm_job_id, Run.status).where(Run.run_id == run_id)).first()
    if row is None or not row.slurm_job_id:
        raise ConfigError(
            f"run {run_id} has no Slurm job", "check the run id (`orchestrator runs`)"
        )
    reason = f"{leases.CANCEL_NOTE}{by} (scancel {row.slurm_job_id})"
    leases.record_cancel_request(store, run_id, row.status, reason)
    commands.scancel(row.slurm_job_id)
    return str(row.slurm_job_id)
