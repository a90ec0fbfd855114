"""One `squeue` call per poll for every job a worker follows, instead of one `scontrol show job`
per job per poll: a worker following a hundred jobs must not flood slurmctld with RPCs. A job
that squeue no longer lists, or that is ending, is asked about on its own (scontrol, then
sacct): that gives its exit code and final state, once."""

from __future__ import annotations

import threading
import time

from orchestrator.backends.slurm import commands
from orchestrator.backends.slurm.commands import JobState

SQUEUE_FORMAT = "%i|%T|%r|%N|%k"  # job id, state, reason, nodes, comment


def parse_squeue(text: str) -> dict[str, JobState]:
    states = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5 or not parts[0]:
            continue
        job_id, state, reason, nodes, comment = parts
        states[job_id] = JobState(
            job_id,
            state.split("+")[0],
            None if reason in ("", "None", "(null)") else reason,
            None,
            None if nodes in ("", "(null)") else nodes,
            None if comment in ("", "(null)") else comment,
        )
    return states


class StateBoard:
    """Job states for many followers, refreshed at most once per `interval_s`."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._jobs: set[str] = set()
        self._states: dict[str, JobState] = {}
        self._at = 0.0
        self._lock = threading.Lock()
        self.calls = 0  # squeue calls made (for tests and the bench)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.discard(job_id)
            self._states.pop(job_id, None)

    def state(self, job_id: str) -> JobState | None:
        with self._lock:
            if job_id not in self._jobs:
                self._jobs.add(job_id)
                self._at = 0.0
            if time.monotonic() - self._at >= self.interval_s:
                self._refresh()
            known = self._states.get(job_id)
        if known is None or known.final or known.state == "COMPLETING":
            return commands.job_state(job_id)  # its exit code and final state, from Slurm
        return known

    def _refresh(self) -> None:
        self._at = time.monotonic()
        if not self._jobs:
            return
        self.calls += 1
        ids = ",".join(sorted(self._jobs))
        res = commands.call(["squeue", "-h", "-j", ids, "-o", SQUEUE_FORMAT])
        # squeue refuses the whole list when a job id is unknown: ask each job then
        self._states = parse_squeue(res.stdout) if res.returncode == 0 else {}
