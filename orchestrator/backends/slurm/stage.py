"""A Slurm run staged and submitted: the run folder and the content-addressed workload source
on the shared file system (or, on node_dir sites, only the script that carries them), then
sbatch."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from orchestrator.backends.slurm import commands
from orchestrator.backends.slurm.plan import helper_files
from orchestrator.backends.slurm.private import require_private_dir, write_private
from orchestrator.backends.slurm.script import SlurmPlan
from orchestrator.errors import ConfigError
from orchestrator.workload_source import workload_files


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
    for source, name in helper_files():
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
