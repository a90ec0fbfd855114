"""The backend-neutral rules of a run's end (orchestrator.runs.ending) and the follower pool
every backend's worker followers build on (orchestrator.runs.follower_pool)."""

from __future__ import annotations

import threading

import pytest
from rich.console import Console

from orchestrator.runs.ending import Cancelled, check_stop, past_limits
from orchestrator.runs.follower_pool import FollowerPool
from orchestrator.runs.stopping import StopEvent, signal_cause


@pytest.mark.parametrize(
    ("limits", "elapsed_quiet", "reason"),
    [
        ((60.0, 30.0), (60.0, 30.0), None),  # at the limits: still within them
        ((60.0, 30.0), (60.5, 0.0), "overall timeout of 60s reached"),
        ((60.0, 30.0), (10.0, 30.5), "no progress from rank 0 for 30s"),
        ((60.0, 30.0), (61.0, 31.0), "overall timeout of 60s reached"),  # the timeout first
        ((None, None), (1e9, 1e9), None),  # no limits: never
        ((None, 2.5), (1e9, 3.0), "no progress from rank 0 for 2.5s"),
        ((90.0, None), (90.1, 1e9), "overall timeout of 90s reached"),
    ],
)
def test_the_one_timeout_rule_and_its_message(
    limits: tuple[float | None, float | None],
    elapsed_quiet: tuple[float, float],
    reason: str | None,
) -> None:
    failure = past_limits(*limits, *elapsed_quiet)
    assert (failure.reason if failure else None) == reason


def test_check_stop_says_who_stopped_the_run_and_before_what() -> None:
    stop = StopEvent()
    check_stop(stop, "the workload started")  # not set: nothing
    stop.stop(signal_cause("SIGINT", "`orchestrator submit` pid 7 on lab1"))
    with pytest.raises(Cancelled) as raised:
        check_stop(stop, "the job was submitted")
    assert str(raised.value) == (
        "cancelled: `orchestrator submit` pid 7 on lab1 got SIGINT (Ctrl-C) before the job "
        "was submitted"
    )
    plain = threading.Event()
    plain.set()
    with pytest.raises(Cancelled, match="^cancelled before the workload started$"):
        check_stop(plain, "the workload started")


class _Pool(FollowerPool):
    """Follows the run ids it is handed; each run ends as `endings` says once `go` is set."""

    thread_name = "test"

    def __init__(self, endings: dict[str, str | None], poll_every_s: float | None) -> None:
        super().__init__(threading.Event(), Console(quiet=True), poll_every_s)
        self.endings, self.go, self.polls = endings, threading.Event(), 0
        self.seen: list[str] = []

    def poll(self) -> int:
        self.polls += 1
        taken = 0
        for run_id in list(self.endings):
            if run_id in self.seen or self.following(run_id):
                continue
            self.seen.append(run_id)
            self.follow_in_thread(run_id, lambda r=run_id: self._end(r))
            taken += 1
        return taken

    def _end(self, run_id: str) -> str | None:
        assert threading.current_thread().name == f"test-{run_id}"
        self.go.wait(10)
        return self.endings[run_id]


def test_a_pool_follows_each_run_in_a_thread_and_counts_how_they_ended() -> None:
    pool = _Pool({"r1": "succeeded", "r2": "failed", "r3": None, "r4": "succeeded"}, None)
    with pool:
        assert pool.scan() == 4  # the worker's scan polls when the pool has no poller
        assert pool.active() and all(pool.following(r) for r in ("r1", "r2", "r3", "r4"))
        assert pool.scan() == 0  # followed already
        pool.go.set()
    # leaving the pool joined every thread; None (left to another follower) is not counted
    assert not pool.active() and not pool.following("r1")
    assert pool.ended() == {"succeeded": 2, "failed": 1}


def test_follow_here_runs_in_the_calling_thread_and_counts_too() -> None:
    pool = _Pool({}, None)
    pool.go.set()
    seen: list[bool] = []

    def follow() -> str:
        seen.append(pool.following("r9"))
        return "cancelled"

    assert pool.follow_here("r9", follow) == "cancelled"
    assert seen == [True] and not pool.following("r9")
    assert pool.ended() == {"cancelled": 1}


def test_a_pool_with_a_poller_polls_on_entry_and_in_its_own_thread() -> None:
    pool = _Pool({"r1": "succeeded"}, poll_every_s=0.01)
    with pool:
        assert pool.polls >= 1 and pool.seen == ["r1"]  # polled once before entering
        assert pool.scan() == 0  # the worker's scan leaves it to the poller
        pool.endings["r2"] = "lost"
        for _ in range(500):
            if "r2" in pool.seen:
                break
            threading.Event().wait(0.01)
        pool.go.set()
    assert pool.seen == ["r1", "r2"]
    assert pool.ended() == {"succeeded": 1, "lost": 1}
