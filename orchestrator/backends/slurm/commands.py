"""Every call to Slurm's commands (sbatch, scontrol, sacct, scancel): the backend's side
effects, argv lists only. Clients find the controller as usual (slurm.conf, $SLURM_CONF)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from orchestrator.errors import OrchestratorError
from orchestrator.states import RunStatus, is_final

CALL_TIMEOUT_S = 60.0
# Slurm's job states (squeue/sacct, the part before any '+') -> the run's status: one table, as
# TorchX's SLURM_STATES. 'queued': Slurm has not started the job; 'running': it runs (or ends
# its steps); a final status: the job has ended, and how the run ends (failed runs are then
# diagnosed from the node logs). A state missing here is treated as running.
SLURM_STATES: dict[str, RunStatus] = {
    "PENDING": "queued",
    "REQUEUED": "queued",
    "REQUEUE_HOLD": "queued",
    "REQUEUE_FED": "queued",
    "CONFIGURING": "queued",  # nodes are booting: the job has not started
    "RESV_DEL_HOLD": "queued",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SUSPENDED": "running",
    "STOPPED": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "RESIZING": "running",
    "COMPLETED": "succeeded",
    "CANCELLED": "cancelled",
    "FAILED": "failed",
    "TIMEOUT": "failed",
    "NODE_FAIL": "failed",
    "PREEMPTED": "failed",
    "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
    "REVOKED": "failed",
    "SPECIAL_EXIT": "failed",
}
FINAL_STATES = frozenset(s for s, status in SLURM_STATES.items() if is_final(status))


class SlurmError(OrchestratorError):
    """A Slurm command failed or Slurm is not reachable."""

    exit_code = 3


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str  # PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    reason: str | None = None  # why it waits or why it ended (Slurm's Reason)
    exit_code: str | None = None  # "rc:signal"
    node_list: str | None = None
    comment: str | None = None  # node_dir sites: the batch shell's fetch handshake

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def run_status(self) -> RunStatus:
        """What this state means for the run (SLURM_STATES; an unknown state: running)."""
        return SLURM_STATES.get(self.state, "running")


def call(argv: list[str], timeout: float = CALL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise SlurmError(
            f"{argv[0]} not found on this machine",
            "run the orchestrator on a Slurm login node, or install the Slurm client tools",
        )
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"{argv[0]} did not answer within {timeout:.0f}s", "check slurmctld (`scontrol ping`)"
        ) from None


def detail(res: subprocess.CompletedProcess[str]) -> str:
    text = (res.stderr or res.stdout).strip().splitlines()
    return text[-1] if text else f"exit {res.returncode}"


def sbatch(script_path: str, argv: tuple[str, ...] | None = None) -> str:
    """Submit; returns the job id (`sbatch --parsable` prints `id` or `id;cluster`)."""
    cmd = list(argv or ("sbatch", "--parsable", script_path))
    res = call(cmd)
    job_id = res.stdout.strip().split(";")[0]
    if res.returncode != 0 or not job_id.isdigit():
        raise SlurmError(
            f"sbatch refused the job: {detail(res)}",
            "check partition, account, qos, time_limit and gres in the [slurm] table",
        )
    return job_id


def parse_scontrol(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def job_state(job_id: str) -> JobState | None:
    """The job's state from the controller (scontrol), else from accounting (sacct) once the
    controller has forgotten it; None when neither knows the job."""
    res = call(["scontrol", "-o", "show", "job", job_id])
    if res.returncode == 0 and res.stdout.strip():
        f = parse_scontrol(res.stdout)
        reason = f.get("Reason")
        return JobState(
            job_id,
            f.get("JobState", "UNKNOWN").split("+")[0],
            None if reason in (None, "None", "(null)") else reason,
            f.get("ExitCode"),
            None if f.get("NodeList") in (None, "(null)") else f.get("NodeList"),
            None if f.get("Comment") in (None, "(null)") else f.get("Comment"),
        )
    return _sacct_state(job_id)


def _sacct_state(job_id: str) -> JobState | None:
    if shutil.which("sacct") is None:
        return None
    res = call(
        ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode,NodeList,Reason"]
    )
    for line in res.stdout.splitlines():
        parts = line.split("|")
        if res.returncode == 0 and len(parts) >= 5 and parts[0] == job_id:
            state = parts[1].split()[0]  # "CANCELLED by 0"
            return JobState(job_id, state, parts[4] or None, parts[2], parts[3] or None)
    return None


def scancel(job_id: str) -> None:
    res = call(["scancel", job_id])
    if res.returncode != 0 and "already completed" not in (res.stderr or ""):
        raise SlurmError(f"scancel {job_id} failed: {detail(res)}", "try `scancel` by hand")


def scancel_quietly(job_id: str) -> None:
    """scancel on a path that is already failing: its own failure must not hide that one."""
    try:
        scancel(job_id)
    except OrchestratorError:
        pass


def release(job_ids: list[str]) -> None:
    """Let held jobs (`sbatch --hold`) be scheduled."""
    if not job_ids:
        return
    res = call(["scontrol", "release", ",".join(job_ids)])
    if res.returncode != 0:
        raise SlurmError(
            f"scontrol release failed: {detail(res)}; the runs are recorded, their jobs held",
            f"release them by hand: scontrol release {','.join(job_ids)}",
        )


def set_comment(job_id: str, text: str) -> None:
    res = call(["scontrol", "update", f"JobId={job_id}", f"Comment={text}"])
    if res.returncode != 0:
        raise SlurmError(
            f"scontrol update of job {job_id} failed: {detail(res)}", "check slurmctld"
        )


def fetch_folders(job_id: str, nnodes: int, folder: str) -> dict[int, bytes]:
    """Every node's copy of `folder` as a tar.gz, through a step in the running job
    (`srun --overlap`: Slurm's own I/O forwarding, no SSH): node rank -> archive bytes."""
    import base64

    pack = 'tar -C "$0" -czf - . | base64'
    res = call(
        [
            "srun",
            f"--jobid={job_id}",
            "--overlap",
            f"--nodes={nnodes}",
            "--ntasks-per-node=1",
            "--label",
            "bash",
            "-c",
            pack,
            folder,
        ],
        timeout=600,
    )
    if res.returncode != 0:
        raise SlurmError(
            f"fetching the run folders of job {job_id} failed: {detail(res)}",
            "check that srun works from this machine (`srun --jobid=ID --overlap hostname`)",
        )
    chunks: dict[int, list[str]] = {}
    for line in res.stdout.splitlines():
        label, sep, text = line.partition(": ")
        if sep and label.strip().isdigit():
            chunks.setdefault(int(label), []).append(text.strip())
    return {rank: base64.b64decode("".join(parts)) for rank, parts in chunks.items()}
