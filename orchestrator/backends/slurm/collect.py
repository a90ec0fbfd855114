"""What a Slurm job leaves, brought into the local run folder: on node_dir sites the nodes'
run folders fetched through the running job, then the rank files, logs, NCCL lines, monitor
samples and the nodes' environments; and what Slurm's final state means for the run."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.backends.slurm import commands, nodelocal
from orchestrator.backends.slurm.script import (
    EXIT_FILE,
    JOB_OUTPUT,
    NODELIST_FILE,
    NodeSlot,
    SlurmPlan,
)
from orchestrator.errors import OrchestratorError
from orchestrator.monitor import MONITOR_FILE
from orchestrator.pathnames import copy_regular, is_safe_name
from orchestrator.plan import NCCL_LOG_DIR
from orchestrator.runfolder.folder import join_nccl_logs
from orchestrator.runs.failure import Failure, diagnose
from orchestrator.runs.lifecycle import write_json
from orchestrator.states import FinalStatus

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.store import Store


def fetch_folders(plan: SlurmPlan, job_id: str, into: Path, console: Console) -> str | None:
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


def state_from_exit_file(plan: SlurmPlan, job_id: str, source: Path) -> commands.JobState | None:
    """The job's ending from the exit status its batch shell wrote, once neither the controller
    nor accounting knows the job (a worker adopting a run long after its job ended)."""
    try:
        text = Path(source, EXIT_FILE).read_text().strip()
    except OSError:
        return None
    code = int(text) if text.lstrip("-").isdigit() else 1
    nodes = ",".join(slot.name for slot in allocated(plan, source)) or None
    return commands.JobState(
        job_id,
        "COMPLETED" if code == 0 else "FAILED",
        "Slurm no longer knows the job; its batch shell's exit status",
        f"{code}:0",
        nodes,
    )


def allocated(plan: SlurmPlan, source: Path) -> tuple[NodeSlot, ...]:
    """The allocation as the batch script wrote it (node rank = line number)."""
    try:
        names = Path(source, NODELIST_FILE).read_text().split()
    except OSError:
        return ()
    if len(names) != plan.job.topology.nnodes or not all(map(is_safe_name, names)):
        return ()  # a name that is not a safe path part never names a file here
    return tuple(NodeSlot(name, name, i) for i, name in enumerate(names))


def collect(plan: SlurmPlan, run_dir: Path, store: Store, shared: Path) -> str:
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


def ending(
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
