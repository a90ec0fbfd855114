"""Whether a run's follower still lives, as `queue` and `attach` say it: a follower on this
host is looked up by its pid (a dead `submit` shows as gone at once, not when its lease runs
out); elsewhere, a lease whose expiry stopped moving says its follower stopped renewing it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from socket import gethostname

from orchestrator.store.follower import Follower


def holder_process(holder: str) -> tuple[str, int] | None:
    """(host, pid) a lease holder names, or None (a worker started with --id)."""
    return Follower.decode(holder).process()


def pid_alive(pid: int) -> bool:
    """A live process of this host (a zombie, killed and not yet reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state != "Z"


def liveness(
    holder: str, here: str | None = None, alive: Callable[[int], bool] = pid_alive
) -> bool | None:
    """True or False for a holder on this host (by its pid); None elsewhere (not checked)."""
    found = holder_process(holder)
    if found is None or found[0] != (here or gethostname()):
        return None
    return alive(found[1])


class LeaseSilence:
    """Seconds since a lease's expiry last moved: a live follower renews it every few
    seconds (runs/keeper.py), so a long silence means its follower is gone or frozen."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.expires: datetime | None = None
        self.since = clock()

    def seen(self, expires: datetime | None) -> float:
        if expires != self.expires:
            self.expires, self.since = expires, self.clock()
        return self.clock() - self.since
