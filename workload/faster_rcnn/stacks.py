"""Where a hung rank was: its Python stack, written on SIGUSR1 (the control plane sends it
before it stops a run that made no progress or lost a peer). The stdlib's faulthandler dumps
every thread from a C signal handler, so it works while the main thread is blocked inside a
collective, in containers and without ptrace. One file per rank, `<run folder>/stacks/
rank-NNNNN.txt` (the run folder is the parent of --output-dir); it stays empty unless the
signal came, and is removed at a normal exit (docs/run-folder.md)."""

from __future__ import annotations

import faulthandler
import os
import signal
from typing import IO, Optional

STACKS_DIR = "stacks"
_open: Optional[IO[str]] = None


def stack_path(output_dir: str, rank: int) -> str:
    parent = os.path.dirname(os.path.abspath(output_dir))
    return os.path.join(parent, STACKS_DIR, f"rank-{rank:05d}.txt")


def register(output_dir: Optional[str], rank: int) -> Optional[str]:
    """Dump every thread's stack into this rank's file on SIGUSR1; the file's path, or None
    where it cannot be made (the run goes on without it)."""
    global _open
    if not output_dir or not hasattr(signal, "SIGUSR1"):
        return None
    path = stack_path(output_dir, rank)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _open = open(path, "w")
        faulthandler.register(signal.SIGUSR1, file=_open, all_threads=True, chain=False)
    except (OSError, RuntimeError, ValueError):
        return None
    return path


def unregister(path: Optional[str]) -> None:
    """At the rank's end: no more dumps; an empty file (no signal came) is removed."""
    global _open
    if path is None or _open is None:
        return
    try:
        faulthandler.unregister(signal.SIGUSR1)
        _open.close()
        if os.path.getsize(path) == 0:
            os.remove(path)
    except (OSError, RuntimeError, ValueError):
        pass
    _open = None
