"""This machine's side of Slurm's folders: shared_dir (run folders and the workload source every
node reads) and, without a shared file system, the folder sbatch reads the script from. Both
must be folders only the user can write: whoever can write there can swap the workload or the
script before the job reads it, and run code as the user on every node. Same rules as the
nodes' own workdir check (orchestrator/nodeside/node_probe.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.nodeside.node_probe import private_dir_problem


def require_private_dir(path: str, key: str) -> None:
    """Create `path` (0700) if missing; ConfigError in one line unless only the user can write
    it. `key` names the setting (`slurm.shared_dir`) the remedy tells the user to change."""
    problem = private_dir_problem(path)
    if problem is not None:
        raise ConfigError(f"{key} is not private: {problem}", f"or change {key}")


def write_private(path: Path, text: str) -> None:
    """Write `path` through a temporary file created O_EXCL (mkstemp, 0600) beside it and
    renamed over it: nothing at a guessable name is ever opened, and a reader sees the old
    file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
