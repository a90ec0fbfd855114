"""Fan-out logic with plain callables: waits for all, one aggregate error, timeouts, order."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.errors import HostKeyError, NodeError
from orchestrator.transport.fanout import (
    FanOutError,
    FanOutTimeout,
    GroupResult,
    failure_reason,
    fan_out_calls,
)


def test_results_come_back_in_the_nodes_order() -> None:
    delays = {"n1": 0.2, "n2": 0.0, "n3": 0.1}

    def work(delay: float) -> float:
        time.sleep(delay)
        return delay

    outcomes = fan_out_calls(delays, work, timeout=5, what="work")
    assert list(outcomes.items()) == list(delays.items())


def test_calls_run_in_parallel() -> None:
    barrier = threading.Barrier(8, timeout=30)  # only passes if all 8 run at once
    outcomes = fan_out_calls(
        {f"n{i}": i for i in range(8)}, lambda i: barrier.wait() >= 0, timeout=60, what="w"
    )
    assert all(v is True for v in outcomes.values())


def test_an_early_failure_still_waits_for_every_node() -> None:
    finished: list[str] = []

    def work(name: str) -> str:
        if name == "fast-fail":
            raise NodeError("disk check failed", {name: "disk full"})
        time.sleep(0.3)
        finished.append(name)
        return name

    outcomes = fan_out_calls({n: n for n in ("fast-fail", "a", "b")}, work, timeout=5, what="w")
    assert sorted(finished) == ["a", "b"]
    with pytest.raises(FanOutError) as caught:
        outcomes.raise_for_failures("disk check")
    error = caught.value
    assert error.one_line() == "disk check failed on 1 of 3 nodes: fast-fail: disk full"
    assert error.results == {"a": "a", "b": "b"}
    assert set(error.errors) == {"fast-fail"}


def test_timeout_counts_as_a_failure_of_that_node_only() -> None:
    release = threading.Event()
    late: list[str] = []

    def work(name: str) -> str:
        if name == "slow":
            release.wait(60)
        return name

    outcomes = fan_out_calls(
        {"slow": "slow", "ok": "ok"}, work, timeout=0.3, what="probe", on_late=late.append
    )
    # Returned while the slow call was still blocked (an ordering check, no wall-clock bound).
    assert not release.is_set() and late == []
    assert outcomes["ok"] == "ok"
    assert isinstance(outcomes["slow"], FanOutTimeout)
    assert failure_reason("slow", outcomes["slow"]) == "probe did not finish within 0.3s"
    release.set()
    deadline = time.monotonic() + 30
    while not late and time.monotonic() < deadline:
        time.sleep(0.01)
    assert late == ["slow"]  # what the late call returned is handed over for disposal


def test_every_failure_is_listed_with_its_reason_and_remedies_are_merged() -> None:
    outcomes: dict[str, object] = {
        "n1": HostKeyError("host key check failed", {"n1": "unknown host key"}, "run ssh-keyscan"),
        "n2": ValueError("bad value"),
        "n3": HostKeyError("host key check failed", {"n3": "unknown host key"}, "run ssh-keyscan"),
        "n4": 4,
    }
    with pytest.raises(FanOutError) as caught:
        GroupResult(outcomes).raise_for_failures("connect")
    assert caught.value.one_line() == (
        "connect failed on 3 of 4 nodes: n1: unknown host key; n2: ValueError: bad value; "
        "n3: unknown host key (run ssh-keyscan)"
    )
    assert caught.value.exit_code == NodeError.exit_code


def test_all_good_returns_plain_results() -> None:
    group = GroupResult({"a": 1, "b": None})
    group.raise_for_failures("x")
    assert dict(group.succeeded) == {"a": 1, "b": None}


def test_keyboard_interrupt_is_not_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt):
        GroupResult({"a": 1, "b": KeyboardInterrupt()}).raise_for_failures("x")
