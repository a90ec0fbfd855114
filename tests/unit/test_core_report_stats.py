"""The regression flag's rules at their edges (orchestrator/regressions.py): which history runs
feed it, the 3 sd and 5 % thresholds, ties in time, the minimum history; groups and spreads
(orchestrator/reports/stats.py), and a whole configuration's group from its kept moments."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from orchestrator.confidence import Moments
from orchestrator.regressions import (
    Regression,
    config_key,
    find_regressions,
    flag_history,
    regressions_by_run,
)
from orchestrator.reports.stats import (
    METRICS,
    Group,
    SummaryGroup,
    devices,
    group_rows,
    spread,
    spread_of_moments,
)

T0 = datetime(2026, 2, 1, tzinfo=timezone.utc)


def _run(run_id: str, day: float, p_core: float | None, **extra: Any) -> dict:
    row = {
        "run_id": run_id,
        "vendor": "metax",
        "config": "MXC500 2x8",
        "topology": "2x8",
        "precision": "fp32",
        "fix_hp": "/",
        "status": "succeeded",
        "finished_at": T0 + timedelta(days=day),
        "p_core": p_core,
        "p_train": None,
    }
    row.update(extra)
    return row


def test_which_history_runs_feed_the_regression_flag_the_newest_ten_earlier_ones() -> None:
    # Two very old slow runs, then ten steady ones: only the newest ten count.
    history = [_run("old0", 0, 100.0), _run("old1", 1, 100.0)]
    history += [_run(f"h{i:02d}", 2 + i, 500.0 + (i % 2)) for i in range(10)]
    found = find_regressions(_run("now", 30, 440.0), list(reversed(history)))
    assert len(found) == 1
    reg = found[0]
    assert (reg.run_id, reg.metric, reg.value, reg.history_n) == ("now", "p_core", 440.0, 10)
    assert reg.history_mean == pytest.approx(500.5)
    assert reg.history_sd == pytest.approx(spread([500.0, 501.0] * 5).sd)
    assert reg.describe() == (
        "p_core 440 img/s is 12% below the mean 500 ± 0.527 of the previous 10 runs"
    )
    # k narrows it further: the newest three.
    assert find_regressions(_run("now", 30, 440.0), history, k=3)[0].history_n == 3


def test_history_that_finished_later_or_failed_or_unfinished_does_not_count() -> None:
    steady = [_run(f"h{i}", i, 500.0 + (i % 2)) for i in range(3)]
    assert len(find_regressions(_run("now", 10, 300.0), steady)) == 1  # exactly 3 is enough
    spoiled = [
        *steady[:2],
        _run("later", 11, 500.0),
        _run("failed", 5, 500.0, status="failed"),
        _run("running", 5, 500.0, finished_at=None),
    ]
    assert find_regressions(_run("now", 10, 300.0), spoiled) == []  # only two count
    # A run that has not finished, or did not succeed, gets no verdict.
    assert find_regressions(_run("now", 10, 300.0, finished_at=None), steady) == []
    assert find_regressions(_run("now", 10, 300.0, status="lost"), steady) == []
    # Rows without a status count as succeeded.
    plain = [{k: v for k, v in h.items() if k != "status"} for h in steady]
    assert len(find_regressions(_run("now", 10, 300.0), plain)) == 1


def test_a_run_finishing_at_the_same_time_counts_only_if_its_id_sorts_first() -> None:
    steady = [_run(f"h{i}", i, 500.0 + (i % 2)) for i in range(2)]
    same_time = [*steady, _run("a-tie", 10, 500.0), _run("z-tie", 10, 500.0)]
    found = find_regressions(_run("m", 10, 300.0), same_time)
    assert [r.history_n for r in found] == [3]  # h0, h1, a-tie; not z-tie, not m itself
    assert find_regressions(_run("a-tie", 10, 300.0), same_time) == []  # only h0, h1


def test_both_thresholds_must_be_crossed_and_only_strictly() -> None:
    history = [_run(f"h{i}", i, v) for i, v in enumerate([490.0, 500.0, 510.0])]  # sd 10
    # mean - 3 sd = 470, mean * 0.95 = 475: flagged only strictly below both.
    assert find_regressions(_run("x", 9, 470.0), history) == []
    assert len(find_regressions(_run("x", 9, 469.9), history)) == 1
    tight = [_run(f"t{i}", i, v) for i, v in enumerate([499.9, 500.0, 500.1])]  # sd 0.1
    assert find_regressions(_run("y", 9, 475.0), tight) == []  # exactly 5 % below
    assert len(find_regressions(_run("y", 9, 474.9), tight)) == 1
    # A constant history (sd 0) still flags a clear drop, and no drop is never flagged.
    flat = [_run(f"f{i}", i, 500.0) for i in range(3)]
    assert len(find_regressions(_run("z", 9, 400.0), flat)) == 1
    assert find_regressions(_run("z", 9, 500.0), flat) == []


def test_each_watched_metric_is_judged_on_its_own_and_missing_values_are_skipped() -> None:
    history = [_run(f"h{i}", i, 500.0 + i, p_train=400.0 + i) for i in range(4)]
    both = find_regressions(_run("x", 9, 300.0, p_train=200.0), history)
    assert [r.metric for r in both] == ["p_train", "p_core"]
    only_train = find_regressions(_run("x", 9, None, p_train=200.0), history)
    assert [r.metric for r in only_train] == ["p_train"]
    gaps = [_run(f"g{i}", i, 500.0 + i, p_train=None) for i in range(4)]
    assert [r.metric for r in find_regressions(_run("x", 9, 300.0, p_train=1.0), gaps)] == [
        "p_core"
    ]


def test_regressions_by_run_maps_each_flagged_run_to_its_findings() -> None:
    history = [_run(f"h{i}", i, 500.0 + (i % 2)) for i in range(4)]
    rows = [_run("ok", 9, 499.0), _run("slow", 10, 300.0)]
    flagged = regressions_by_run(rows, history)
    assert list(flagged) == ["slow"]
    assert [r.metric for r in flagged["slow"]] == ["p_core"]


def test_config_key_is_vendor_config_precision_fix_hp_with_blanks_for_missing() -> None:
    assert config_key({"vendor": "v", "config": "c", "precision": "amp", "fix_hp": "bs=2"}) == (
        "v",
        "c",
        "amp",
        "bs=2",
    )
    assert config_key({}) == ("", "", "", "")


def test_groups_expose_their_key_parts_counts_and_stats() -> None:
    rows = [
        _run("a", 1, 500.0, mem="30.0/64.0", fix_hp="bs=2"),
        _run("b", 2, 520.0, mem="not-a-number", fix_hp="bs=2"),
        _run("c", 3, 510.0, mem=None, fix_hp="bs=2"),
    ]
    (group,) = group_rows(rows)
    assert (group.vendor, group.config, group.precision, group.fix_hp) == (
        "metax",
        "MXC500 2x8",
        "fp32",
        "bs=2",
    )
    assert (group.topology, group.n, group.run_ids) == ("2x8", 3, ["a", "b", "c"])
    assert group.mem == "30.0/64.0"  # an unreadable label ranks below any number
    stats = group.stats("p_core")
    assert stats is not None
    assert stats.as_dict() == {"mean": 510.0, "sd": 10.0, "min": 500.0, "max": 520.0, "n": 3}
    assert group.stats("map") is None
    olympic = group.olympic("p_core")  # 500, 510, 520: the fastest and the slowest dropped
    assert olympic is not None and (olympic.mean, olympic.dropped, olympic.n) == (510.0, 2, 1)
    assert group.olympic("map") is None
    assert Group(("v", "c", "p", "f"), "1x1").mem is None


def test_spread_ignores_missing_and_non_finite_values() -> None:
    s = spread([1.0, float("nan"), float("inf"), None, "3"])
    assert s is not None and (s.n, s.mean, s.min, s.max) == (2, 2.0, 1.0, 3.0)
    assert s.sd == pytest.approx(2**0.5)


def test_devices_of_a_topology_accept_upper_case_and_refuse_other_text() -> None:
    assert [devices(t) for t in ("2X4", "3x8", "x", "2x", "")] == [8, 24, None, None, None]


def test_a_run_without_a_status_counts_as_succeeded() -> None:
    steady = [_run(f"h{i}", i, 500.0 + (i % 2)) for i in range(3)]
    plain = {k: v for k, v in _run("now", 10, 300.0).items() if k != "status"}
    assert [r.run_id for r in find_regressions(plain, steady)] == ["now"]


def test_runs_finishing_at_the_same_time_are_ordered_by_run_id_for_the_newest_k() -> None:
    # Four runs with one finish time; the newest three by run id are b, c, d (steady), not a.
    tied = [_run(rid, 5, v) for rid, v in (("b", 500.0), ("c", 501.0), ("d", 500.0), ("a", 100.0))]
    found = find_regressions(_run("z", 6, 400.0), tied, k=3)
    assert [(r.history_n, round(r.history_mean, 2)) for r in found] == [(3, 500.33)]


def test_flag_history_counts_a_run_without_a_status_as_succeeded() -> None:
    steady = [_run(f"h{i}", i, 500.0 + (i % 2)) for i in range(3)]
    plain = {k: v for k, v in _run("now", 10, 300.0).items() if k != "status"}
    assert [r.run_id for r in flag_history([*steady, plain])["now"]] == ["now"]
    failed = _run("bad", 11, 100.0, status="failed")
    assert list(flag_history([*steady, plain, failed])) == ["now"]


def test_flag_history_orders_runs_finishing_at_the_same_time_by_run_id() -> None:
    # a, b, c, d finish together: in run id order a has no history yet and b, c, d are the
    # newest three before z
    tied = [_run(rid, 5, v) for rid, v in (("b", 500.0), ("c", 501.0), ("d", 500.0), ("a", 100.0))]
    flagged = flag_history([*tied, _run("z", 6, 400.0)], k=3)
    assert list(flagged) == ["z"]
    assert [(r.history_n, round(r.history_mean, 2)) for r in flagged["z"]] == [(3, 500.33)]


def test_a_group_without_a_topology_has_an_empty_one() -> None:
    row = {k: v for k, v in _run("a", 1, 500.0).items() if k != "topology"}
    assert group_rows([row])[0].topology == ""


def test_an_unreadable_memory_label_ranks_below_a_small_one() -> None:
    rows = [_run("a", 1, 1.0, mem="n/a"), _run("b", 2, 1.0, mem="0.5/64.0")]
    assert group_rows(rows)[0].mem == "0.5/64.0"


def test_regressions_by_run_takes_rows_without_a_status_and_skips_configs_without_history() -> None:
    def plain(row: dict) -> dict:
        return {k: v for k, v in row.items() if k != "status"}

    history = [plain(_run(f"h{i}", i, 500.0 + (i % 2))) for i in range(3)]
    now = plain(_run("now", 10, 300.0))
    alone = _run("alone", 10, 1.0, vendor="other")  # no history of its configuration at all
    flagged = regressions_by_run([now, alone], history)
    assert list(flagged) == ["now"]
    assert [(r.metric, r.history_n, r.history_mean) for r in flagged["now"]] == [
        ("p_core", 3, pytest.approx(500 + 1 / 3))
    ]
    assert flagged["now"] == find_regressions(now, history)


# Five runs of one configuration; each metric measured by the first few of them.
SUMMARY_VALUES = {
    "p_core": [500.0, 520.0, 510.0, 505.5, 530.25],  # five: the olympic mean drops two
    "p_train": [400.0, 410.0, 403.0],  # three: it keeps the middle one
    "e2e_time": [61.0, 64.5],  # two: the plain mean
    "map": [0.372],  # one: no sd, no interval
    "p_whole": [250.0, 250.0, 250.0, 250.0],  # identical repeats: exactly no spread
}


def _moments(values: list[float]) -> Moments:
    """What a summary row keeps of these values."""
    return Moments(
        len(values), math.fsum(values), math.fsum(v * v for v in values), min(values), max(values)
    )


def _summary_and_runs(flagged: list[str]) -> tuple[SummaryGroup, Group]:
    rows = [
        {
            **_run(rid, i, None, fix_hp="bs=2"),
            **{m: v[i] if i < len(v) else None for m, v in SUMMARY_VALUES.items()},
        }
        for i, rid in enumerate("abcde")
    ]
    (group,) = group_rows(rows)
    summary = SummaryGroup(
        group.key,
        group.topology,
        group.n,
        {m: _moments(v) for m, v in SUMMARY_VALUES.items()},
        "30.0/64.0",
        "device",
        True,
        flagged,
    )
    return summary, group


def test_a_summary_group_from_kept_moments_gives_the_stats_of_the_group_of_its_runs() -> None:
    summary, group = _summary_and_runs([])
    assert (summary.vendor, summary.config, summary.precision, summary.fix_hp) == (
        "metax",
        "MXC500 2x8",
        "fp32",
        "bs=2",
    )
    for metric in (*METRICS, "not_kept"):
        kept, runs = summary.stats(metric), group.stats(metric)
        if runs is None:
            assert metric == "not_kept" and kept is None
            assert summary.interval(metric) is None and summary.olympic(metric) is None
            continue
        assert kept is not None, metric
        assert (kept.n, kept.min, kept.max) == (runs.n, runs.min, runs.max), metric
        assert kept.mean == pytest.approx(runs.mean, rel=1e-12), metric
        assert kept.sd == (None if runs.sd is None else pytest.approx(runs.sd, rel=1e-9)), metric
        kept_ci, runs_ci = summary.interval(metric), group.interval(metric)
        assert kept_ci is not None and runs_ci is not None, metric
        assert kept_ci.n == runs_ci.n and kept_ci.mean == pytest.approx(runs_ci.mean), metric
        for part in ("sd", "half_width"):
            want = getattr(runs_ci, part)
            assert getattr(kept_ci, part) == (None if want is None else pytest.approx(want)), metric
        kept_o, runs_o = summary.olympic(metric), group.olympic(metric)
        assert kept_o is not None and runs_o is not None, metric
        assert (kept_o.dropped, kept_o.n) == (runs_o.dropped, runs_o.n), metric
        assert kept_o.mean == pytest.approx(runs_o.mean, rel=1e-12), metric
    # The figures themselves, so that both sides cannot agree on a wrong one.
    p_core = summary.stats("p_core")
    assert p_core is not None
    assert (p_core.n, p_core.mean, p_core.min, p_core.max) == (5, 513.15, 500.0, 530.25)
    assert p_core.sd == pytest.approx(12.0488589, rel=1e-8)
    p_core_ci = summary.interval("p_core")
    assert p_core_ci is not None and p_core_ci.half_width == pytest.approx(14.9606343, rel=1e-8)
    olympics = {m: summary.olympic(m) for m in ("p_core", "p_train", "e2e_time", "map", "p_whole")}
    assert {m: (o.mean, o.dropped, o.n) for m, o in olympics.items() if o is not None} == {
        "p_core": (pytest.approx(511.8333333), 2, 3),  # 505.5, 510, 520
        "p_train": (403.0, 2, 1),
        "e2e_time": (62.75, 0, 2),
        "map": (0.372, 0, 1),
        "p_whole": (250.0, 2, 2),
    }
    assert summary.stats("map") == group.stats("map")  # one value: no sd
    assert spread_of_moments(Moments(0, 0.0, 0.0, 0.0, 0.0)) is None  # nothing kept


def test_a_summary_group_lists_the_flags_of_its_flagged_runs_in_their_order() -> None:
    def flag(run_id: str, metric: str) -> Regression:
        return Regression(run_id, metric, 300.0, 500.0, 1.0, 10)

    regressions = {
        "b": [flag("b", "p_core")],
        "d": [flag("d", "p_train"), flag("d", "p_core")],
        "x": [flag("x", "p_core")],  # a run of another configuration
    }
    # c is flagged in the kept verdicts but has no flags in this mapping: it adds none
    summary, group = _summary_and_runs(["b", "c", "d"])
    expected = [regressions["b"][0], *regressions["d"]]
    assert summary.flags(regressions) == expected
    assert group.flags(regressions) == expected  # the same as the group of its runs
    assert summary.flags({}) == []
