"""`orchestrator doctor` on a Slurm cluster: what can be checked before a job runs, from the
login node: Slurm's commands, the controller, the partition, the shared folder (or, without
one, srun for fetching), and Slurm's own verdict on the request (`sbatch --test-only`:
partition, account, QoS, GRES, time limit and node count, with no job submitted). The per-node checks (dataset, weights, torch, disk) run as the
job's first step, where the nodes are."""

from __future__ import annotations

import shutil
import tempfile

from orchestrator.backends.base import DoctorCheck, DoctorReport
from orchestrator.backends.slurm import commands
from orchestrator.errors import OrchestratorError
from orchestrator.nodeside.node_probe import private_dir_problem
from orchestrator.specs import ClusterSpec, Topology

Check = tuple[str, bool, str]


def run_slurm_doctor(cluster: ClusterSpec, topology: str | None) -> DoctorReport:
    from orchestrator.backends.slurm.plan import make_slurm_plan, settings_of
    from orchestrator.runs.lifecycle import SubmitRequest

    settings = settings_of(cluster)
    topo = Topology.parse(topology) if topology else Topology(1, 1)
    checks: list[Check] = [_tools()]
    if checks[0][1]:
        checks.append(_controller())
        if settings.partition:
            checks.append(_partition(settings.partition, topo.nnodes))
    if settings.fetch:
        srun = shutil.which("srun") is not None
        detail = f"{settings.node_dir} on each node's own disk; results fetched with srun --overlap"
        checks.append(("node_dir", srun, detail if srun else "srun is not on PATH"))
        checks.append(_script_dir(settings.script_dir))
    else:
        checks.append(_shared_dir(settings.shared_dir))
    if checks[0][1]:
        plan = make_slurm_plan(cluster, SubmitRequest(topology=topo), run_id="doctor")
        checks.append(_test_only(plan.script, plan.sbatch_argv))
    return DoctorReport(
        cluster.name,
        cluster.source,
        tuple(DoctorCheck("", name, ok, detail) for name, ok, detail in checks),
        ready="Slurm accepts the request (the nodes' own checks run as the job's first step)",
        not_ready="not ready: see the failed checks",
    )


def _tools() -> Check:
    missing = [t for t in ("sbatch", "scontrol", "scancel") if shutil.which(t) is None]
    if missing:
        return ("slurm commands", False, f"not on PATH: {', '.join(missing)}")
    extra = "" if shutil.which("sacct") else " (no sacct: states come from scontrol only)"
    return ("slurm commands", True, "sbatch, scontrol, scancel" + extra)


def _controller() -> Check:
    try:
        res = commands.call(["scontrol", "ping"])
    except OrchestratorError as exc:
        return ("controller", False, exc.one_line())
    text = " ".join((res.stdout or res.stderr).split())
    return ("controller", res.returncode == 0 and "UP" in text, text or f"exit {res.returncode}")


def _partition(name: str, nnodes: int) -> Check:
    try:
        res = commands.call(["scontrol", "-o", "show", "partition", name])
    except OrchestratorError as exc:
        return ("partition", False, exc.one_line())
    if res.returncode != 0 or not res.stdout.strip():
        return ("partition", False, f"{name}: {commands.detail(res)}")
    fields = commands.parse_scontrol(res.stdout)
    state, total = fields.get("State", "?"), fields.get("TotalNodes", "0")
    ok = state == "UP" and total.isdigit() and int(total) >= nnodes
    return ("partition", ok, f"{name}: State={state}, {total} nodes (the run needs {nnodes})")


def _shared_dir(path: str) -> Check:
    problem = private_dir_problem(path)  # creates it (0700) when missing
    if problem is not None:
        return ("shared_dir", False, f"{problem} (or change slurm.shared_dir)")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as exc:
        return ("shared_dir", False, f"{path} is not writable here: {exc.strerror or exc}")
    return ("shared_dir", True, f"{path} only yours, writable (every node must see it here)")


def _script_dir(path: str) -> Check:
    """node_dir sites: where sbatch reads the script; no one else may swap it."""
    problem = private_dir_problem(path)
    return ("script folder", problem is None, problem or f"{path} (only you can write it)")


def _test_only(script: str, argv: tuple[str, ...]) -> Check:
    """Slurm's verdict on the exact request `submit` would make; no job is created."""
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch", prefix="orchestrator-doctor-") as f:
        f.write(script)
        f.flush()
        try:
            res = commands.call([argv[0], "--test-only", *argv[1:-1], f.name])
        except OrchestratorError as exc:
            return ("sbatch --test-only", False, exc.one_line())
    text = " ".join((res.stderr or res.stdout).split())
    return ("sbatch --test-only", res.returncode == 0, text.removeprefix("sbatch: ")[:300])
