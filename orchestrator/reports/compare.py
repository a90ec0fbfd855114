"""Two or more runs (or configurations) side by side: every seed metric with its absolute and
relative change from the first (the baseline), which environment fields and hyper-parameters
differ, and the thresholds a script gates on (`--fail-below p_core=-5%`).

Pure: the sides are built from seed_table rows, environment blocks and hparams that the caller
read (orchestrator/reports/compare_sides.py). `orchestrator compare` and the
web page's /compare use the same functions. docs/web.md explains the rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator import units
from orchestrator.confidence import Interval, Welch, interval_of, welch
from orchestrator.convergence import Convergence
from orchestrator.errors import ConfigError
from orchestrator.reports.stats import METRICS, spread

# Units of the seed metrics (docs/metrics.md); mAP is a fraction of 1.
UNITS = {"e2e_time": "s", "p_whole": "img/s", "p_train": "img/s", "p_core": "img/s", "map": ""}
HIGHER_IS_BETTER = {
    "e2e_time": False,
    "p_whole": True,
    "p_train": True,
    "p_core": True,
    "map": True,
}
COMPARE_FORMATS = ("table", "markdown", "csv", "json")
# The fields that make two runs like each other; `report` groups by them, compare warns when
# they differ (a 1x2 against a 2x1 on another cluster is not a measure of a change).
SETUP_FIELDS = ("vendor", "topology", "cluster", "backend", "runtime", "precision", "fix_hp")


@dataclass(frozen=True)
class Side:
    """One column: a run, or the mean of a configuration's last runs."""

    label: str
    kind: Literal["run", "config"]
    run_ids: tuple[str, ...]
    metrics: dict[str, float | None]
    spread: dict[str, float | None]  # sample sd over a configuration's runs (None for a run)
    environment: dict[str, str]  # environment block label -> its values joined
    hparams: dict[str, str]
    status: str = "succeeded"
    # What makes runs alike (SETUP_FIELDS): listed first among the differences, and warned of.
    setup: dict[str, str] = field(default_factory=dict)
    # A configuration's n, mean, 95 % interval and CV per metric (empty for a run).
    intervals: dict[str, Interval | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Delta:
    metric: str
    base: float | None
    value: float | None
    # Welch's t-test of the two sides' repeats; None when a side is one run (nothing to test).
    test: Welch | None = None

    @property
    def significant(self) -> bool | None:
        return None if self.test is None else self.test.significant

    @property
    def absolute(self) -> float | None:
        if self.base is None or self.value is None:
            return None
        return self.value - self.base

    @property
    def relative(self) -> float | None:
        """0.05 = 5 % above the baseline."""
        if self.absolute is None or not self.base:
            return None
        return self.absolute / abs(self.base)

    @property
    def better(self) -> bool | None:
        if not self.absolute:
            return None
        return (self.absolute > 0) == HIGHER_IS_BETTER.get(self.metric, True)


@dataclass(frozen=True)
class Comparison:
    sides: list[Side]
    deltas: list[list[Delta]]  # per side after the first, one per metric
    environment_differs: set[str] = field(default_factory=set)
    hparams_differ: set[str] = field(default_factory=set)
    setup_differs: list[str] = field(default_factory=list)  # in SETUP_FIELDS order

    @property
    def baseline(self) -> Side:
        return self.sides[0]

    @property
    def environment_labels(self) -> list[str]:
        labels: list[str] = []
        for side in self.sides:
            labels += [k for k in side.environment if k not in labels]
        return labels

    @property
    def hparam_keys(self) -> list[str]:
        return sorted({k for side in self.sides for k in side.hparams})


def run_side(
    row: Mapping[Any, Any],
    environment: Sequence[tuple[str, list[str]]],
    hparams: Mapping[Any, Any],
    setup: Sequence[Mapping[Any, Any]] = (),
) -> Side:
    return Side(
        label=str(row["run_id"]),
        kind="run",
        run_ids=(str(row["run_id"]),),
        metrics={m: _number(row.get(m)) for m in METRICS},
        spread={m: None for m in METRICS},
        environment=_environment(environment),
        hparams={str(k): str(v) for k, v in hparams.items()},
        status=str(row.get("status") or ""),
        setup=setup_of(setup),
    )


def config_side(
    label: str,
    rows: Sequence[Mapping[Any, Any]],
    environment: Sequence[tuple[str, list[str]]],
    hparams: Mapping[Any, Any],
    setup: Sequence[Mapping[Any, Any]] = (),
) -> Side:
    """The mean of a configuration's runs (each metric over the runs that have it)."""
    metrics: dict[str, float | None] = {}
    sds: dict[str, float | None] = {}
    for metric in METRICS:
        stats = spread(row.get(metric) for row in rows)
        metrics[metric] = stats.mean if stats else None
        sds[metric] = stats.sd if stats else None
    return Side(
        intervals={m: interval_of(row.get(m) for row in rows) for m in METRICS},
        label=label,
        kind="config",
        run_ids=tuple(str(r["run_id"]) for r in rows),
        metrics=metrics,
        spread=sds,
        environment=_environment(environment),
        hparams={str(k): str(v) for k, v in hparams.items()},
        setup=setup_of(setup),
    )


def setup_of(rows: Sequence[Mapping[Any, Any]]) -> dict[str, str]:
    """Each setup field over the side's runs: its value, or the values joined when they vary."""
    found: dict[str, str] = {}
    for name in SETUP_FIELDS:
        values = sorted({str(r[name]) for r in rows if r.get(name) is not None})
        if values:
            found[name] = "; ".join(values)
    return found


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _environment(block: Sequence[tuple[str, list[str]]]) -> dict[str, str]:
    return {label: "; ".join(values) for label, values in block}


def compare(sides: Sequence[Side]) -> Comparison:
    if len(sides) < 2:
        raise ConfigError("compare needs two or more runs or configurations", "name another one")
    base = sides[0]
    deltas = [
        [
            Delta(
                m,
                base.metrics.get(m),
                side.metrics.get(m),
                welch(base.intervals.get(m), side.intervals.get(m)),
            )
            for m in METRICS
        ]
        for side in sides[1:]
    ]
    env_labels = {k for side in sides for k in side.environment}
    hp_keys = {k for side in sides for k in side.hparams}
    return Comparison(
        list(sides),
        deltas,
        {k for k in env_labels if len({s.environment.get(k, "") for s in sides}) > 1},
        {k for k in hp_keys if len({s.hparams.get(k) for s in sides}) > 1},
        [k for k in SETUP_FIELDS if len({s.setup.get(k, "") for s in sides}) > 1],
    )


def unlike_warning(comparison: Comparison) -> str | None:
    """The warning when the sides are not alike (different topology, cluster, ...)."""
    if not comparison.setup_differs:
        return None
    return (
        f"the sides differ in {', '.join(comparison.setup_differs)}: "
        "the changes mix these differences with any regression"
    )


# -- thresholds ----------------------------------------------------------------------------------

_THRESHOLD = re.compile(r"^\s*(\w+)\s*=\s*([+-]?\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Threshold:
    """`p_core=-5%`: fail when a side's change from the baseline is below -5 % (fail-below) or,
    for `--fail-above e2e_time=+10%`, above +10 %. Without `%` the limit is in the metric's unit."""

    metric: str
    limit: float
    relative: bool
    above: bool = False
    # --require-significant: a change past the limit counts only when Welch's test finds it
    # significant (where both sides are configurations with 2+ runs; else the limit decides).
    significant: bool = False

    def text(self) -> str:
        sign = "above" if self.above else "below"
        limit = (
            f"{self.limit * 100:+g}%" if self.relative else f"{self.limit:+g} {UNITS[self.metric]}"
        )
        return f"{self.metric} {sign} {limit.strip()}" + (
            ", significant at 95 %" if self.significant else ""
        )

    def breached_by(self, delta: Delta) -> bool:
        change = delta.relative if self.relative else delta.absolute
        if change is None:
            return delta.value is None and delta.base is not None  # the metric went missing
        past = change > self.limit if self.above else change < self.limit
        if past and self.significant and delta.significant is False:
            return False  # within the noise of the repeats
        return past


def parse_threshold(text: str, above: bool = False, significant: bool = False) -> Threshold:
    option = "--fail-above" if above else "--fail-below"
    match = _THRESHOLD.match(text)
    if not match:
        raise ConfigError(
            f"{option} {text!r} is not METRIC=CHANGE",
            f"write e.g. {option} p_core=-5% (relative) or {option} p_core=-20 (img/s)",
        )
    metric, number, percent = match.group(1), float(match.group(2)), bool(match.group(3))
    if metric == "mAP":
        metric = "map"
    if metric not in METRICS:
        raise ConfigError(
            f"{option} names unknown metric {metric!r}", f"use one of {', '.join(METRICS)}"
        )
    return Threshold(metric, number / 100.0 if percent else number, percent, above, significant)


@dataclass(frozen=True)
class Breach:
    side: str
    threshold: Threshold
    delta: Delta

    def describe(self) -> str:
        d = self.delta
        if d.value is None:
            change = "missing"
        elif self.threshold.relative and d.relative is not None:
            change = f"{d.relative * 100:+.1f}%"
        else:
            change = f"{d.absolute:+.4g} {UNITS[d.metric]}".strip()
        return (
            f"{self.side}: {d.metric} {change} against the baseline{significance(d)} "
            f"(limit: {self.threshold.text()})"
        )


def significance(delta: Delta) -> str:
    """`, p = 0.003 (significant)`; empty where no test was possible (a side is one run)."""
    if delta.test is None:
        return ""
    verdict = "significant" if delta.test.significant else "not significant"
    return f", Welch p = {delta.test.p:.2g} ({verdict})"


def breaches(comparison: Comparison, thresholds: Sequence[Threshold]) -> list[Breach]:
    found = []
    for side, deltas in zip(comparison.sides[1:], comparison.deltas):
        by_metric = {d.metric: d for d in deltas}
        for threshold in thresholds:
            delta = by_metric[threshold.metric]
            if threshold.breached_by(delta):
                found.append(Breach(side.label, threshold, delta))
    return found


# -- text ----------------------------------------------------------------------------------------


def metric_header(metric: str) -> str:
    name = "mAP" if metric == "map" else metric
    return f"{name} ({UNITS[metric]})" if UNITS[metric] else name


def number(value: float | None) -> str:
    """Three significant digits, whole numbers from 1,000 up (1,234 img/s; 37.4 s; 0.372)."""
    if value is None:
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value else "0"


def percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.1f}%"


def signed(value: float | None) -> str:
    if value is None:
        return ""
    return ("+" if value > 0 else "") + number(value)


def _value_cell(side: Side, metric: str) -> str:
    """A run's value, or a configuration's mean ± the half-width of its 95 % interval."""
    cell = units.metric(metric, side.metrics.get(metric))
    found = side.intervals.get(metric)
    if found is not None and found.half_width is not None and found.cv is not None:
        cell += f" ± {units.metric(metric, found.half_width)} (CV {found.cv * 100:.1f}%)"
    return cell


def _tested(comparison: Comparison) -> bool:
    return any(d.test is not None for deltas in comparison.deltas for d in deltas)


def p_cell(delta: Delta) -> str:
    if delta.test is None:
        return ""
    return f"{delta.test.p:.2g}" + (" *" if delta.test.significant else "")


TESTED_NOTE = (
    "A configuration is its mean ± the half-width of the 95 % confidence interval (with the "
    "coefficient of variation, sd / mean; n is in its label); Welch p is "
    "the two-sided p-value of Welch's t-test between the baseline's repeats and the side's "
    "(* significant at 95 %)."
)


def metric_rows(comparison: Comparison) -> list[list[str]]:
    """One row per metric: baseline, then each side's value, change and relative change (and
    Welch's p where configurations were compared; `*`: significant at 95 %)."""
    tested = _tested(comparison)
    rows = []
    for i, metric in enumerate(METRICS):
        # the values as `report` prints them (18.0 s, 3.00 img/s, mAP 0.372)
        row = [metric_header(metric), _value_cell(comparison.baseline, metric)]
        for side, deltas in zip(comparison.sides[1:], comparison.deltas):
            d = deltas[i]
            row += [_value_cell(side, metric), signed(d.absolute), percent(d.relative)]
            row += [p_cell(d)] if tested else []
        rows.append(row)
    return rows


def metric_columns(comparison: Comparison) -> list[str]:
    columns = ["metric", f"{comparison.baseline.label} (baseline)"]
    for side in comparison.sides[1:]:
        columns += [side.label, "change", "change (%)"]
        columns += ["Welch p"] if _tested(comparison) else []
    return columns


def difference_rows(comparison: Comparison) -> list[list[str]]:
    """Setup fields (topology, cluster, ...), then environment fields and hyper-parameters,
    that differ between the sides."""
    rows = [
        [name, *[s.setup.get(name, "") for s in comparison.sides]]
        for name in comparison.setup_differs
    ]
    for label in comparison.environment_labels:
        if label in comparison.environment_differs:
            rows.append([label, *[s.environment.get(label, "") for s in comparison.sides]])
    for key in comparison.hparam_keys:
        if key in comparison.hparams_differ:
            rows.append([f"--set {key}", *[s.hparams.get(key, "") for s in comparison.sides]])
    return rows


def render(
    comparison: Comparison,
    output: str,
    failed: Sequence[Breach] = (),
    convergence: Sequence[Convergence] = (),
) -> str:
    """markdown, csv or json (the CLI draws `table` itself); CSV has no convergence."""
    if output == "markdown":
        from orchestrator.reports.report import convergence_lines

        return _markdown(comparison, failed) + "".join(
            line + "\n" for line in convergence_lines(convergence)
        )
    if output == "csv":
        from orchestrator.reports.report import to_csv

        lines: list[list[Any]] = [
            ["side", "kind", "metric", "value", "change", "change_relative"]
            + ["n", "ci_low", "ci_high", "cv", "welch_p", "significant"]
        ]
        for side_index, side in enumerate(comparison.sides):
            for i, metric in enumerate(METRICS):
                d = comparison.deltas[side_index - 1][i] if side_index else None
                found = side.intervals.get(metric)
                test = d.test if d else None
                lines.append(
                    [
                        side.label,
                        side.kind,
                        metric,
                        side.metrics.get(metric),
                        d.absolute if d else None,
                        d.relative if d else None,
                        found.n if found else None,
                        found.low if found else None,
                        found.high if found else None,
                        found.cv if found else None,
                        test.p if test else None,
                        test.significant if test else None,
                    ]
                )
        return to_csv(lines[0], lines[1:])
    if output == "json":
        from orchestrator.reports.report import to_json

        return to_json(
            {
                "baseline": comparison.baseline.label,
                "sides": [
                    {
                        "label": s.label,
                        "kind": s.kind,
                        "run_ids": list(s.run_ids),
                        "metrics": s.metrics,
                        "sd": s.spread,
                        "environment": s.environment,
                        "hparams": s.hparams,
                        "setup": s.setup,
                        "intervals": {
                            m: (i.as_dict() if i else None) for m, i in s.intervals.items()
                        },
                    }
                    for s in comparison.sides
                ],
                "changes": [
                    {
                        "side": side.label,
                        **{
                            d.metric: {
                                "absolute": d.absolute,
                                "relative": d.relative,
                                "welch": d.test.as_dict() if d.test else None,
                            }
                            for d in deltas
                        },
                    }
                    for side, deltas in zip(comparison.sides[1:], comparison.deltas)
                ],
                "setup_differs": comparison.setup_differs,
                "warning": unlike_warning(comparison),
                "environment_differs": sorted(comparison.environment_differs),
                "hparams_differ": sorted(comparison.hparams_differ),
                "failed": [b.describe() for b in failed],
                "convergence": [c.as_dict() for c in convergence],
            }
        )
    raise ConfigError(
        f"unknown compare format {output!r}", f"use one of {', '.join(COMPARE_FORMATS)}"
    )


def _markdown(comparison: Comparison, failed: Sequence[Breach]) -> str:
    def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
        out = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return out

    warning = unlike_warning(comparison)
    lines = [f"**Warning:** {warning}.", ""] if warning else []
    lines += ["#### Metrics", "", *table(metric_columns(comparison), metric_rows(comparison))]
    if _tested(comparison):
        lines += ["", TESTED_NOTE]
    differences = difference_rows(comparison)
    lines += ["", "#### Differences", ""]
    if differences:
        lines += table(["", *[s.label for s in comparison.sides]], differences)
    else:
        lines.append("Same setup, environment and hyper-parameters.")
    if failed:
        lines += ["", "#### Over the limits", "", *[f"- {b.describe()}" for b in failed]]
    return "\n".join(lines) + "\n"
