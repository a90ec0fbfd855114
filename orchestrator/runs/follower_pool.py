"""The worker's followers of one backend's runs whose follower is gone, written once: one
thread per run followed, the count of how they ended, start and stop with the worker. A
backend fills in `poll` (find the runs nobody follows and take them: `follow_in_thread` or
`follow_here`); what talks to its system stays in the backend."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from rich.console import Console

# One run's follow, to its end: the run's final status, or None when it was left for another
# follower (not counted).
FollowRun = Callable[[], str | None]


class FollowerPool(ABC):
    """Threads that follow runs, one per run id, as a context manager: leaving it waits for
    them. With `poll_every_s` the pool polls in a thread of its own and the worker's `scan`
    returns 0; without, the worker's `scan` polls."""

    thread_name = "follow"  # each run's thread is named '<thread_name>-<run id>'
    what = "following runs"  # said before a poll's error
    daemon = False  # whether a run's thread may outlive a process that exits without joining

    def __init__(
        self, stop: threading.Event, console: Console, poll_every_s: float | None = None
    ) -> None:
        self.stop, self.console, self.poll_every_s = stop, console, poll_every_s
        self.counts: dict[str, int] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._poller: threading.Thread | None = None

    @abstractmethod
    def poll(self) -> int:
        """Take the runs nobody follows now; returns how many were taken or ended."""

    def __enter__(self) -> FollowerPool:
        if self.poll_every_s is not None:
            self.poll()  # before the worker's first idle check
            name = f"{self.thread_name}-poller"
            self._poller = threading.Thread(target=self._poll_loop, name=name, daemon=True)
            self._poller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
        for thread in list(self._threads.values()):
            thread.join()

    def scan(self) -> int:
        """The worker's periodic look (0 when the pool polls in its own thread)."""
        return 0 if self.poll_every_s is not None else self.poll()

    def _poll_loop(self) -> None:
        assert self.poll_every_s is not None
        while not self._done.wait(self.poll_every_s):
            if self.stop.is_set():
                return
            try:
                self.poll()
            except OrchestratorError as exc:  # the store is briefly away: try again
                self.console.print(f"[yellow]{self.what}: {exc.one_line()}[/]")

    def following(self, run_id: str) -> bool:
        """Whether a thread of this pool follows the run now."""
        with self._lock:
            return run_id in self._threads

    def follow_in_thread(self, run_id: str, follow: FollowRun) -> None:
        """Follow the run in a thread of its own."""
        name = f"{self.thread_name}-{run_id}"
        thread = threading.Thread(
            target=self._run, args=(run_id, follow), name=name, daemon=self.daemon
        )
        with self._lock:
            self._threads[run_id] = thread
        thread.start()

    def follow_here(self, run_id: str, follow: FollowRun) -> str | None:
        """Follow the run in the calling thread; returns how it ended (None: left to another)."""
        with self._lock:
            self._threads[run_id] = threading.current_thread()
        return self._run(run_id, follow)

    def _run(self, run_id: str, follow: FollowRun) -> str | None:
        status = None
        try:
            status = follow()
        finally:
            with self._lock:
                self._threads.pop(run_id, None)
                if status is not None:
                    self.counts[status] = self.counts.get(status, 0) + 1
        return status

    def active(self) -> bool:
        with self._lock:
            return any(t.is_alive() for t in self._threads.values())

    def ended(self) -> dict[str, int]:
        """How many followed runs ended in each status (a copy: threads add to it)."""
        with self._lock:
            return dict(self.counts)
