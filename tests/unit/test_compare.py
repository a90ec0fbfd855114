"""orchestrator/reports/compare.py (pure): changes from the baseline, thresholds, what differs."""

from __future__ import annotations

import json

import pytest

from orchestrator.errors import ConfigError
from orchestrator.reports.compare import (
    Delta,
    breaches,
    compare,
    config_side,
    difference_rows,
    parse_threshold,
    render,
    run_side,
    unlike_warning,
)

ENV_A = [("OS", ["Ubuntu 20.04"]), ("accelerator driver", ["2.2.0"])]
ENV_B = [("OS", ["Ubuntu 20.04"]), ("accelerator driver", ["2.3.1"])]


def _row(run_id: str, p_core: float | None, e2e: float = 800.0) -> dict[str, object]:
    return {
        "run_id": run_id,
        "status": "succeeded",
        "e2e_time": e2e,
        "p_whole": 300.0,
        "p_train": 400.0,
        "p_core": p_core,
        "map": 0.37,
    }


def test_changes_are_absolute_and_relative_to_the_baseline() -> None:
    result = compare(
        [
            run_side(_row("a", 500.0), ENV_A, {"bs": "16"}),
            run_side(_row("b", 450.0, 880.0), ENV_B, {"bs": "32"}),
        ]
    )
    p_core = {d.metric: d for d in result.deltas[0]}["p_core"]
    assert (p_core.base, p_core.value, p_core.absolute) == (500.0, 450.0, -50.0)
    assert p_core.relative == pytest.approx(-0.10)
    assert p_core.better is False
    e2e = {d.metric: d for d in result.deltas[0]}["e2e_time"]
    assert e2e.relative == pytest.approx(0.10) and e2e.better is False  # slower is worse
    assert result.environment_differs == {"accelerator driver"}
    assert result.hparams_differ == {"bs"}


def test_a_missing_or_zero_baseline_has_no_relative_change() -> None:
    assert Delta("p_core", None, 10.0).relative is None
    assert Delta("p_core", 0.0, 10.0).relative is None
    assert Delta("p_core", 10.0, None).absolute is None


def test_configuration_side_is_the_mean_of_its_runs() -> None:
    side = config_side(
        "m:2x8:fp32", [_row("a", 500.0), _row("b", 520.0), _row("c", None)], ENV_A, {}
    )
    assert side.metrics["p_core"] == pytest.approx(510.0)
    assert side.spread["p_core"] == pytest.approx(14.142, abs=1e-3)
    assert side.run_ids == ("a", "b", "c")


@pytest.mark.parametrize(
    ("text", "metric", "limit", "relative"),
    [
        ("p_core=-5%", "p_core", -0.05, True),
        ("p_train = -20", "p_train", -20.0, False),
        ("mAP=-1.5%", "map", -0.015, True),
    ],
)
def test_thresholds_parse(text: str, metric: str, limit: float, relative: bool) -> None:
    threshold = parse_threshold(text)
    assert (threshold.metric, threshold.relative) == (metric, relative)
    assert threshold.limit == pytest.approx(limit)


@pytest.mark.parametrize("text", ["p_core", "p_core=five", "p_core<-5%", "speed=-5%"])
def test_bad_thresholds_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_threshold(text)


def test_breaches_respect_the_limit_exactly() -> None:
    base = run_side(_row("base", 500.0), ENV_A, {})
    sides = [
        base,
        run_side(_row("ok", 475.0), ENV_A, {}),
        run_side(_row("bad", 474.0), ENV_A, {}),
        run_side(_row("gone", None), ENV_A, {}),
    ]
    found = breaches(compare(sides), [parse_threshold("p_core=-5%")])
    assert [b.side for b in found] == [
        "bad",
        "gone",
    ]  # -5.0 % passes, -5.2 % and a missing value fail
    assert found[0].describe() == "bad: p_core -5.2% against the baseline (limit: p_core below -5%)"
    above = breaches(
        compare([base, run_side(_row("slow", 500.0, 900.0), ENV_A, {})]),
        [parse_threshold("e2e_time=+10%", above=True)],
    )
    assert [b.side for b in above] == ["slow"]


def test_render_formats() -> None:
    result = compare([run_side(_row("a", 500.0), ENV_A, {}), run_side(_row("b", 450.0), ENV_B, {})])
    markdown = render(result, "markdown")
    assert "| p_core (img/s) | 500 | 450 | -50 | -10.0% |" in markdown
    assert "| accelerator driver | 2.2.0 | 2.3.1 |" in markdown
    document = json.loads(render(result, "json"))
    assert document["changes"][0]["p_core"]["relative"] == pytest.approx(-0.1)
    assert document["environment_differs"] == ["accelerator driver"]
    assert render(result, "csv").splitlines()[9] == "b,run,p_core,450.0,-50.0,-0.1,,,,,,"
    with pytest.raises(ConfigError):
        render(result, "xml")
    with pytest.raises(ConfigError):
        compare([run_side(_row("a", 1.0), ENV_A, {})])


SETUP_A = {
    "vendor": "nvidia",
    "topology": "1x2",
    "cluster": "lab-a",
    "backend": "ssh",
    "runtime": "docker",
    "precision": "amp",
    "fix_hp": "/",
}


def test_unlike_sides_list_their_setup_first_and_are_warned_of() -> None:
    other = {**SETUP_A, "topology": "2x1", "cluster": "lab-b"}
    result = compare(
        [
            run_side(_row("a", 500.0), ENV_A, {}, [SETUP_A]),
            run_side(_row("b", 450.0), ENV_B, {}, [other]),
        ]
    )
    assert result.setup_differs == ["topology", "cluster"]
    assert difference_rows(result) == [
        ["topology", "1x2", "2x1"],
        ["cluster", "lab-a", "lab-b"],
        ["accelerator driver", "2.2.0", "2.3.1"],
    ]
    warning = "the sides differ in topology, cluster: the changes mix these differences with any regression"
    assert unlike_warning(result) == warning
    assert render(result, "markdown").startswith(f"**Warning:** {warning}.\n")
    assert json.loads(render(result, "json"))["setup_differs"] == ["topology", "cluster"]
    alike = compare(
        [
            run_side(_row("a", 500.0), ENV_A, {}, [SETUP_A]),
            run_side(_row("b", 1.0), ENV_A, {}, [SETUP_A]),
        ]
    )
    assert alike.setup_differs == [] and unlike_warning(alike) is None
    assert "Same setup, environment and hyper-parameters." in render(alike, "markdown")


def test_a_configuration_side_shows_every_value_its_runs_hold() -> None:
    side = config_side(
        "c", [_row("a", 1.0), _row("b", 2.0)], ENV_A, {}, [SETUP_A, {**SETUP_A, "cluster": "lab-b"}]
    )
    assert side.setup["cluster"] == "lab-a; lab-b" and side.setup["topology"] == "1x2"


def test_values_are_written_as_report_writes_them() -> None:
    # 18 s, 3 img/s and mAP 0.2: `report` prints 18.0, 3.00 and 0.200, so compare does too
    slow = {**_row("a", 3.0, 18.0), "p_whole": 2.0, "p_train": 2.5, "map": 0.2}
    result = compare([run_side(slow, ENV_A, {}), run_side(_row("b", 6.0, 9.0), ENV_A, {})])
    markdown = render(result, "markdown")
    assert "| e2e_time (s) | 18.0 | 9.0 | -9 | -50.0% |" in markdown
    assert "| p_core (img/s) | 3.00 | 6.00 | +3 | +100.0% |" in markdown
    assert "| mAP | 0.200 | 0.370 |" in markdown
