"""The queue's scheduling decision (orchestrator/schedule.py: schedule, iter_schedule): what
can start, the capacity filter, FIFO order, reservations by waiting runs, and the wait reasons."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

from orchestrator.schedule import Decision, QueuedRun, iter_schedule, schedule
from orchestrator.specs import NodeSpec

AT = datetime(2026, 1, 1, tzinfo=timezone.utc)
# Two nodes of 4 accelerators and two of 8.
MIXED = [
    NodeSpec("s1", "10.0.0.1", accelerators=4),
    NodeSpec("s2", "10.0.0.2", accelerators=4),
    NodeSpec("b1", "10.0.0.3", accelerators=8),
    NodeSpec("b2", "10.0.0.4", accelerators=8),
]


def _run(
    run_id: str,
    nnodes: int,
    nproc: int = 1,
    names: Sequence[str] | None = None,
    cluster: str = "c",
    key: str | None = None,
) -> QueuedRun:
    request = {"node_names": list(names) if names else None, "cluster_key": key}
    return QueuedRun(run_id, cluster, nnodes, nproc, request, AT)


def _decide(queued, busy=None, nodes=MIXED) -> list[tuple[str, tuple[str, ...] | None, str]]:
    return [(d.run_id, d.nodes, d.reason) for d in schedule(queued, busy or {}, lambda run: nodes)]


def test_capacity_filter_with_nodes_of_4_and_8_accelerators_and_runs_of_1_4_8_processes() -> None:
    assert _decide([_run("p1", 4, 1)]) == [("p1", ("s1", "s2", "b1", "b2"), "")]
    assert _decide([_run("p4", 4, 4)]) == [("p4", ("s1", "s2", "b1", "b2"), "")]
    assert _decide([_run("p8", 2, 8)]) == [("p8", ("b1", "b2"), "")]
    assert _decide([_run("p8", 3, 8)]) == [("p8", None, "cluster 'c' has no 3 fitting node(s)")]
    assert _decide([_run("p9", 1, 9)]) == [("p9", None, "cluster 'c' has no 1 fitting node(s)")]


def test_runs_start_in_fifo_order_while_nodes_last() -> None:
    queued = [_run("a", 1, 8), _run("b", 1, 4), _run("c", 2, 4), _run("d", 1, 1)]
    assert _decide(queued) == [
        ("a", ("b1",), ""),
        ("b", ("s1",), ""),
        ("c", ("s2", "b2"), ""),
        ("d", None, "nodes busy: s1 (run b), s2 (run c), b1 (run a), b2 (run c)"),
    ]


def test_a_waiting_run_reserves_the_free_nodes_it_would_take() -> None:
    busy = {("c", "b1"): "run x"}
    queued = [_run("big", 2, 8), _run("small", 1, 8), _run("tiny", 1, 4)]
    assert _decide(queued, busy) == [
        ("big", None, "nodes busy: b1 (run x)"),
        ("small", None, "nodes busy: b1 (run x), b2 (waiting run big)"),
        ("tiny", ("s1",), ""),  # nodes big cannot use stay free for others
    ]


def test_named_nodes_wait_until_every_named_node_is_free() -> None:
    busy = {("c", "b2"): "run x"}
    queued = [_run("pinned", 1, 4, ["s2", "b2"]), _run("later", 1, 4, ["s2"])]
    assert _decide(queued, busy) == [
        ("pinned", None, "nodes busy: b2 (run x)"),
        ("later", None, "nodes busy: s2 (waiting run pinned)"),
    ]
    assert _decide(queued) == [
        ("pinned", ("s2",), ""),
        ("later", None, "nodes busy: s2 (run pinned)"),
    ]
    # Named nodes too small for the run never fit.
    assert _decide([_run("x", 1, 8, ["s1"])]) == [
        ("x", None, "cluster 'c' has no 1 fitting node(s)")
    ]


def test_busy_nodes_belong_to_their_own_cluster() -> None:
    busy = {("other", "b1"): "run y"}
    assert _decide([_run("a", 2, 8)], busy) == [("a", ("b1", "b2"), "")]
    busy = {("c", "b1"): "run y"}
    assert _decide([_run("a", 1, 8, cluster="other")], busy) == [("a", ("b1",), "")]


def test_runs_of_one_shape_share_one_node_lookup_but_not_across_shapes() -> None:
    asked: list[str] = []

    def nodes_of(run: QueuedRun) -> list[NodeSpec]:
        asked.append(run.run_id)
        return MIXED

    queued = [
        _run("a", 1, 8),
        _run("b", 1, 8),
        _run("c", 1, 4),
        _run("d", 1, 8, key="k2"),
        _run("e", 1, 8, ["b2"]),
        _run("f", 1, 8, cluster="c2"),
    ]
    decisions = schedule(queued, {}, nodes_of)
    assert asked == ["a", "c", "d", "e", "f"]
    assert [d.nodes for d in decisions] == [("b1",), ("b2",), ("s1",), None, None, ("b1",)]


def test_iter_schedule_decides_lazily_and_can_skip_the_reasons() -> None:
    queued = [_run("a", 1, 8), _run("b", 2, 8), _run("c", 9, 1)]
    lazy = iter_schedule(queued, {}, lambda run: MIXED, reasons=False)
    assert next(lazy) == Decision("a", ("b1",), "")
    assert list(lazy) == [Decision("b", None, "-"), Decision("c", None, "-")]
    assert schedule([], {}, lambda run: MIXED) == []


def test_a_run_that_can_never_fit_does_not_stop_the_runs_behind_it() -> None:
    queued = [_run("huge", 1, 16), _run("next", 1, 8)]
    assert _decide(queued) == [
        ("huge", None, "cluster 'c' has no 1 fitting node(s)"),
        ("next", ("b1",), ""),
    ]
