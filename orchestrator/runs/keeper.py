"""The thread that keeps a followed run's leases (node leases, or a Slurm follow row) alive
and turns what it learns from the store into events: a cancel request, this process's own stop
signal, or leases lost to another follower."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from orchestrator.errors import OrchestratorError
from orchestrator.runs.stopping import StopEvent, cancel_request_cause, pass_on
from orchestrator.store.cancel import cancel_note
from orchestrator.store.leases import LeaseKind, renew

if TYPE_CHECKING:
    from orchestrator.store import Store

RENEW_MAX_S = 5.0  # renew (and look for a cancel request) at least this often


def default_worker_id() -> str:
    """How a worker (or a Slurm submit's follow row) names itself in leases: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseKeeper:
    """Renews the run's leases and turns a cancel request, the worker's own stop signal or
    lost leases into the run's stop event. A Slurm run (Slurm owns the job; its `lease` is the
    job's follow row) maps some of them to a detach event instead: `on_worker_stop` (a worker
    that stops leaves the job to the next worker) and `on_lost` (another follower took it
    over)."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        holder: str,
        ttl_s: float,
        worker_stop: threading.Event,
        run_stop: threading.Event,
        lease: LeaseKind = "nodes",
        on_worker_stop: threading.Event | None = None,
        on_lost: threading.Event | None = None,
    ) -> None:
        self.store, self.run_id, self.holder, self.ttl_s = store, run_id, holder, ttl_s
        self.worker_stop, self.run_stop, self.lease = worker_stop, run_stop, lease
        self.on_worker_stop = on_worker_stop or run_stop
        self.on_lost = on_lost or run_stop
        self.done = threading.Event()
        self.why: str | None = None
        self.thread = threading.Thread(target=self._loop, name=f"lease-{run_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        every = min(self.ttl_s / 3, RENEW_MAX_S)
        next_renew = time.monotonic() + every
        while not self.done.wait(0.2):
            if self.worker_stop.is_set() and not self.on_worker_stop.is_set():
                pass_on(self.worker_stop, self.on_worker_stop)
            if time.monotonic() < next_renew:
                continue
            next_renew = time.monotonic() + every
            try:
                held, cancel = renew(self.store, self.run_id, self.holder, self.ttl_s, self.lease)
            except OrchestratorError:
                continue  # the store is briefly away: the lease still has time left
            if cancel and not self.run_stop.is_set():
                self.why = "cancel requested"
                self._cancel()
            if held == 0 and not self.run_stop.is_set():
                self.why = "its leases were taken over (this worker was presumed dead)"
                self.on_lost.set()

    def _cancel(self) -> None:
        """Stop the run, naming who asked (`orchestrator cancel` notes it in the history)."""
        if not isinstance(self.run_stop, StopEvent):
            self.run_stop.set()
            return
        try:
            note = cancel_note(self.store, self.run_id)
        except OrchestratorError:
            note = None
        self.run_stop.stop(cancel_request_cause(note))
