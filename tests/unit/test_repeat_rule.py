"""Repeat rules (orchestrator/repeat_rule.py): the verdict over repeats so far (failed runs
are failures, not samples), the campaign-file and command-line syntax, and one line per mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scipy import stats as scipy_stats

from orchestrator.campaign import expand, parse_campaign, render_expansion
from orchestrator.errors import ConfigError
from orchestrator.repeat_rule import (
    RepeatRule,
    rule_from_doc,
    rule_from_options,
    rule_from_table,
)

RULE = RepeatRule(2.0, 3, 10, "p_core")


def _half_pct(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    return 100 * scipy_stats.t.ppf(0.975, n - 1) * scipy_stats.sem(values) / mean


def test_a_stable_configuration_holds_at_the_minimum() -> None:
    values = [500.0, 502.0, 499.0]
    verdict = RULE.verdict([("succeeded", v) for v in values])
    assert verdict.holds and verdict.samples == 3 and verdict.failures == 0
    assert verdict.half_pct == pytest.approx(_half_pct(values))  # 0.76 %
    assert verdict.describe() == (
        "repeat rule (p_core within ±2 %, min 3, max 10) holds after 3 samples: ±0.76 %; "
        "no more repeats"
    )


def test_below_the_minimum_it_never_holds() -> None:
    verdict = RULE.verdict([("succeeded", 500.0), ("succeeded", 500.0)])  # zero width, n = 2
    assert not verdict.holds and verdict.half_pct == 0.0
    assert verdict.describe().endswith("not met yet with 2 samples: ±0.00 %; repeating")


def test_a_failed_run_in_the_middle_is_a_failure_not_a_sample() -> None:
    outcomes = [("succeeded", 500.0), ("failed", None), ("succeeded", 502.0), ("lost", None)]
    verdict = RULE.verdict(outcomes)
    assert (verdict.samples, verdict.failures, verdict.attempts) == (2, 2, 4)
    assert not verdict.holds  # two samples are below the minimum of three
    assert "2 samples and 2 failed runs" in verdict.describe()
    verdict = RULE.verdict([*outcomes, ("succeeded", 501.0)])
    assert verdict.holds and verdict.samples == 3


def test_a_noisy_configuration_goes_on_to_the_maximum() -> None:
    noisy = [500.0, 380.0, 520.0, 350.0, 510.0, 400.0, 530.0, 360.0, 505.0, 390.0]
    for n in range(3, 10):
        assert not RULE.verdict([("succeeded", v) for v in noisy[:n]]).holds
    last = RULE.verdict([("succeeded", v) for v in noisy])
    assert last.exhausted
    assert last.describe().startswith(
        "repeat rule (p_core within ±2 %, min 3, max 10) not met after 10 runs (10 samples): ±"
    )
    assert last.describe().endswith("; stopping at the maximum")


def test_campaign_syntax_expands_to_the_maximum() -> None:
    data = {
        "campaign": {
            "topologies": ["1x1"],
            "repeat": {"until_ci_pct": 2, "min": 3, "max": 5, "metric": "p_train"},
        }
    }
    spec = parse_campaign(data, "c.toml")
    assert spec.repeat_rule == RepeatRule(2.0, 3, 5, "p_train")
    assert [r.repeat for r in expand(spec)] == [1, 2, 3, 4, 5]
    shown = render_expansion(spec, expand(spec), "lab.toml")
    assert (
        "  repeats until the 95 % interval of p_train is within ±2 % of the mean, at least 3 and "
        "at most 5 runs; later repeats are cancelled once it holds"
    ) in shown.splitlines()
    assert rule_from_doc({"repeat_rule": spec.repeat_rule.as_doc()}) == spec.repeat_rule
    assert rule_from_doc({}) is None


@pytest.mark.parametrize(
    "repeat,line",
    [
        (
            {"min": 3},
            "c.toml: campaign.repeat: until_ci_pct is missing (write repeat = {until_ci_pct = 2, "
            'min = 3, max = 10, metric = "p_core"})',
        ),
        (
            {"until_ci_pct": 0},
            "c.toml: campaign.repeat: until 0 is not a percentage above 0 (e.g. until_ci_pct = 2)",
        ),
        (
            {"until_ci_pct": "two"},
            "c.toml: campaign.repeat: until 'two' is not a percentage above 0 "
            "(e.g. until_ci_pct = 2)",
        ),
        (
            {"until_ci_pct": 2, "min": 1},
            "c.toml: campaign.repeat: min 1 is not a whole number 2..1000 (an interval needs 2 "
            "runs or more; e.g. min 3, max 10)",
        ),
        (
            {"until_ci_pct": 2, "min": 5, "max": 4},
            "c.toml: campaign.repeat: max 4 is below min 5 (make max at least min)",
        ),
        (
            {"until_ci_pct": 2, "metric": "speed"},
            "c.toml: campaign.repeat: metric 'speed' is unknown (use one of p_core, p_train, "
            "p_whole, e2e_time, map)",
        ),
        (
            {"until_ci_pct": 2, "until": 3},
            "c.toml: campaign.repeat: until is not a repeat setting (known: until_ci_pct, min, "
            "max, metric)",
        ),
        (
            3,
            'c.toml: campaign.repeat must be a table (write repeat = {until_ci_pct = 2, min = 3, max = 10, metric = "p_core"})',
        ),
    ],
)
def test_each_mistake_in_a_campaign_file_is_one_line(repeat: Any, line: str) -> None:
    with pytest.raises(ConfigError) as found:
        rule_from_table(repeat, "c.toml")
    assert found.value.one_line() == line


def test_repeats_and_repeat_together_are_refused() -> None:
    data = {"campaign": {"topologies": ["1x1"], "repeats": 3, "repeat": {"until_ci_pct": 2}}}
    with pytest.raises(ConfigError) as found:
        parse_campaign(data, "c.toml")
    assert "repeat and campaign.repeats are both given" in found.value.one_line()


def test_command_line_options() -> None:
    assert rule_from_options("2%", None, None, None) == RepeatRule(2.0, 3, 10, "p_core")
    assert rule_from_options("1.5", 4, 8, "map") == RepeatRule(1.5, 4, 8, "map")
    assert rule_from_options(None, None, None, None) is None
    with pytest.raises(ConfigError) as found:
        rule_from_options(None, 3, None, None)
    assert found.value.one_line() == (
        "--repeat-min needs --repeat-until (add e.g. --repeat-until 2%)"
    )
    with pytest.raises(ConfigError) as found:
        rule_from_options("2 percent", None, None, None)
    assert found.value.one_line() == (
        "--repeat-until: until '2 percent' is not a percentage above 0 (e.g. --repeat-until 2%)"
    )


def test_submit_refuses_bad_rules_in_one_line(run_cli: Any, tmp_path: Path) -> None:
    for args, line in (
        (["--repeat-until", "2%", "--repeat", "3"], "--repeat and --repeat-until are both given"),
        (["--repeat-until", "2%", "--detach"], "--repeat-until runs in the foreground only"),
        (["--repeat-max", "4"], "--repeat-max needs --repeat-until"),
        (["--repeat-until", "x"], "--repeat-until: until 'x' is not a percentage above 0"),
    ):
        result = run_cli("submit", "1x1", *args)
        assert result.exit_code == 2, result
        assert result.err.startswith(f"error: {line}") and "Traceback" not in result.err
        assert len(result.err.strip().splitlines()) <= 2
