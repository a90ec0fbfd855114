"""Fan-out logic with plain callables: waits for all, one aggregate error, timeouts, order."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.errors import HostKeyError, NodeError
from orchestrator.specs import NodeSpec, SshSettings
from orchestrator.transport.base import Transport
from orchestrator.transport.fanout import (
    FanOutError,
    FanOutTimeout,
    GroupResult,
    NodeSession,
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


def test_group_result_keeps_the_nodes_order_in_every_view() -> None:
    bad, worse = ValueError("bad"), KeyError("k")
    group = GroupResult({"n3": 3, "n1": bad, "n2": 2, "n0": worse})
    assert list(group.items()) == [("n3", 3), ("n1", bad), ("n2", 2), ("n0", worse)]
    assert list(group.succeeded.items()) == [("n3", 3), ("n2", 2)]
    assert list(group.failed.items()) == [("n1", bad), ("n0", worse)]
    assert group["n1"] is bad and len(group) == 4 and "n0" in group
    assert group == {"n3": 3, "n1": bad, "n2": 2, "n0": worse}


def test_fan_out_calls_orders_by_node_not_by_finish() -> None:
    delays = {"n1": 0.3, "n2": 0.2, "n3": 0.1, "n4": 0.0}

    def work(name: str) -> str:
        time.sleep(delays[name])
        if name in ("n1", "n3"):
            raise NodeError("check failed", {name: f"{name} is broken"})
        return name

    group = fan_out_calls({n: n for n in delays}, work, timeout=30, what="check")
    assert list(group) == ["n1", "n2", "n3", "n4"]
    assert list(group.succeeded.items()) == [("n2", "n2"), ("n4", "n4")]
    assert list(group.failed) == ["n1", "n3"]
    assert group.reasons() == {"n1": "n1 is broken", "n3": "n3 is broken"}


def test_group_result_ok_only_without_failures() -> None:
    assert GroupResult({"a": 1, "b": None}).ok()
    assert not GroupResult({"a": 1, "b": OSError("gone")}).ok()
    assert GroupResult({"a": 1}).error("x") is None


def test_raise_for_failures_names_every_failed_node() -> None:
    timeout = FanOutTimeout("start timed out", {"n4": "start did not finish within 30s"})
    group = GroupResult(
        {
            "n1": NodeError("start failed", {"n1": "no such file: torchrun"}),
            "n2": "started",
            "n3": RuntimeError(),
            "n4": timeout,
        }
    )
    with pytest.raises(FanOutError) as caught:
        group.raise_for_failures("start")
    assert caught.value.one_line() == (
        "start failed on 3 of 4 nodes: n1: no such file: torchrun; n3: RuntimeError; "
        "n4: start did not finish within 30s"
    )
    assert caught.value.results == {"n2": "started"}
    assert list(caught.value.errors) == ["n1", "n3", "n4"]
    assert caught.value.errors["n4"] is timeout
    error = group.error("start")
    assert error is not None and error.one_line() == caught.value.one_line()


def test_empty_group() -> None:
    group: GroupResult[int] = GroupResult({})
    group.raise_for_failures("nothing")  # no node, no failure
    assert group.ok() and len(group) == 0 and list(group) == []
    assert dict(group.succeeded) == {} and dict(group.failed) == {}
    assert group.error("nothing") is None
    assert group.reasons() == {} and group.recover(lambda node, exc: 0) == {}
    assert fan_out_calls({}, lambda item: item, timeout=1, what="w") == {}


def test_group_result_is_read_only_and_a_copy() -> None:
    outcomes: dict[str, object] = {"a": 1}
    group = GroupResult(outcomes)
    outcomes["b"] = ValueError("later")
    assert list(group) == ["a"] and dict(group.failed) == {}
    with pytest.raises(TypeError):
        group.succeeded["c"] = 3  # type: ignore[index]
    with pytest.raises(AttributeError):
        group.failed = {}  # type: ignore[misc]


def test_recover_and_reasons_say_what_each_failed_node_did() -> None:
    group = GroupResult({"a": 1, "b": ValueError("bad value"), "c": 3})
    assert group.recover(lambda node, exc: -len(str(exc))) == {"a": 1, "b": -9, "c": 3}
    assert list(group.recover(lambda node, exc: 0)) == ["a", "b", "c"]
    assert group.reasons() == {"b": "ValueError: bad value"}
    assert group.reasons(lambda node, exc: f"{node} said {exc}") == {"b": "b said bad value"}


def test_raise_interrupts_reraises_only_interrupts() -> None:
    GroupResult({"a": ValueError("bad")}).raise_interrupts()
    stop = SystemExit(3)
    with pytest.raises(SystemExit) as caught:
        GroupResult({"a": ValueError("bad"), "b": stop}).raise_interrupts()
    assert caught.value is stop


def test_node_session_fans_out_into_a_group_result() -> None:
    nodes = [NodeSpec("a", "local"), NodeSpec("b", "local")]

    def work(t: Transport) -> str:
        if t.name == "a":
            raise ValueError("no")
        return t.name

    with NodeSession(nodes, SshSettings()) as session:
        assert list(session.connected.succeeded) == ["a", "b"] and session.connected.ok()
        assert session.connect_error() is None
        group = session.fan_out_results(work, timeout=30, what="probe")
        assert dict(group.succeeded) == {"b": "b"} and list(group.failed) == ["a"]
        with pytest.raises(FanOutError) as caught:
            session.fan_out(work, timeout=30, what="probe")
        assert caught.value.one_line() == "probe failed on 1 of 2 nodes: a: ValueError: no"
        assert session.fan_out(lambda t: t.name, timeout=30, what="name") == {"a": "a", "b": "b"}
