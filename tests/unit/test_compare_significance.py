"""compare between configurations: Welch's t-test on each metric (checked against scipy here) and
the gate's --require-significant."""

from __future__ import annotations

import json

import pytest
from scipy import stats as scipy_stats

from orchestrator.reports.compare import (
    breaches,
    compare,
    config_side,
    metric_rows,
    parse_threshold,
    render,
    run_side,
)

ENV = [("OS", ["Ubuntu 20.04"])]


def _rows(prefix: str, p_cores: list[float | None]) -> list[dict[str, object]]:
    return [
        {"run_id": f"{prefix}{i}", "p_core": v, "p_train": 400.0, "map": 0.37}
        for i, v in enumerate(p_cores)
    ]


BASE = [500.0, 505.0, 498.0, 502.0, 501.0]
CLEAR_DROP = [480.0, 482.0, 478.0, 481.0]  # -4 %, tight: significant
NOISY_DROP = [520.0, 440.0, 505.0, 450.0]  # -3.5 % on average, but noisy: not significant


def _comparison(after: list[float | None]):  # type: ignore[no-untyped-def]
    return compare(
        [
            config_side("before", _rows("a", BASE), ENV, {}),
            config_side("after", _rows("b", after), ENV, {}),
        ]
    )


def test_welch_p_per_metric_equals_scipy() -> None:
    delta = {d.metric: d for d in _comparison(CLEAR_DROP).deltas[0]}["p_core"]
    expected = scipy_stats.ttest_ind(CLEAR_DROP, BASE, equal_var=False)
    assert delta.test is not None
    assert delta.test.p == pytest.approx(expected.pvalue, rel=1e-8)
    assert delta.significant is True
    noisy = {d.metric: d for d in _comparison(NOISY_DROP).deltas[0]}["p_core"]
    assert noisy.significant is False
    assert noisy.test is not None
    assert noisy.test.p == pytest.approx(
        scipy_stats.ttest_ind(NOISY_DROP, BASE, equal_var=False).pvalue, rel=1e-8
    )
    # p_train is identical on both sides: no spread, no difference, p = 1
    p_train = {d.metric: d for d in _comparison(CLEAR_DROP).deltas[0]}["p_train"]
    assert p_train.test is not None and p_train.test.p == 1.0


def test_a_failed_run_in_the_middle_is_not_a_sample() -> None:
    with_failure = {d.metric: d for d in _comparison([480.0, None, 482.0, 478.0]).deltas[0]}
    expected = scipy_stats.ttest_ind([480.0, 482.0, 478.0], BASE, equal_var=False)
    assert with_failure["p_core"].test is not None
    assert with_failure["p_core"].test.p == pytest.approx(expected.pvalue, rel=1e-8)


def test_the_gate_can_require_significance() -> None:
    plain = parse_threshold("p_core=-3%")
    strict = parse_threshold("p_core=-3%", significant=True)
    assert [b.side for b in breaches(_comparison(NOISY_DROP), [plain])] == ["after"]
    assert breaches(_comparison(NOISY_DROP), [strict]) == []  # within the noise
    found = breaches(_comparison(CLEAR_DROP), [strict])
    assert [b.side for b in found] == ["after"]
    assert "Welch p = " in found[0].describe() and "(significant)" in found[0].describe()
    assert found[0].describe().endswith("(limit: p_core below -3%, significant at 95 %)")


def test_a_run_side_has_no_test_and_the_limit_decides() -> None:
    result = compare(
        [
            config_side("before", _rows("a", BASE), ENV, {}),
            run_side({"run_id": "r", "p_core": 450.0, "status": "succeeded"}, ENV, {}),
        ]
    )
    delta = {d.metric: d for d in result.deltas[0]}["p_core"]
    assert delta.test is None and delta.significant is None
    strict = parse_threshold("p_core=-5%", significant=True)
    assert [b.side for b in breaches(result, [strict])] == ["r"]


def test_outputs_carry_the_interval_and_the_test() -> None:
    comparison = _comparison(CLEAR_DROP)
    row = next(r for r in metric_rows(comparison) if r[0].startswith("p_core"))
    # baseline mean 501.2 ± t(0.975, 4) * sd / sqrt(5); the side's p-value is starred
    assert row[1] == "501 ± 3.21 (CV 0.5%)" and row[-1].endswith(" *")
    document = json.loads(render(comparison, "json"))
    p_core = document["changes"][0]["p_core"]["welch"]
    assert p_core["significant"] is True and p_core["df"] > 0
    ci = document["sides"][0]["intervals"]["p_core"]
    low, high = scipy_stats.t.interval(0.95, 4, loc=501.2, scale=scipy_stats.sem(BASE))
    assert (ci["ci_low"], ci["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    csv_line = render(comparison, "csv").splitlines()[1 + 5 + 3]  # the side's p_core
    assert csv_line.startswith("after,config,p_core,480.25,") and csv_line.endswith(",True")
    assert "Welch p" in render(comparison, "markdown")
