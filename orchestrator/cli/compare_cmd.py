"""`orchestrator compare`: runs or configurations side by side; a gate for scripts."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from orchestrator.cli.context import AppContext
from orchestrator.reports.compare import COMPARE_FORMATS, Comparison

if TYPE_CHECKING:
    from orchestrator.convergence import Convergence

REGRESSION_EXIT = 1  # a threshold was crossed (bad input exits 2, as every command)


@click.command("compare")
@click.argument("items", nargs=-1, required=True)
@click.option(
    "--format", "output", type=click.Choice(COMPARE_FORMATS), default="table", show_default=True
)
@click.option(
    "--fail-below",
    "fail_below",
    multiple=True,
    metavar="METRIC=CHANGE",
    help="Exit 1 when a side's change from the baseline is below this: p_core=-5% (relative) "
    "or p_core=-20 (in img/s). Repeat for several metrics.",
)
@click.option(
    "--fail-above",
    "fail_above",
    multiple=True,
    metavar="METRIC=CHANGE",
    help="Exit 1 when a change is above this, for metrics where lower is better: e2e_time=+10%.",
)
@click.option(
    "--require-significant",
    is_flag=True,
    help="A limit is crossed only when Welch's t-test finds the change significant (p < 0.05) "
    "where both sides are configurations with 2+ runs.",
)
@click.option(
    "--since-change-point",
    "since_change",
    is_flag=True,
    help="A configuration is the mean of its runs since its last change point (at most --last): "
    "the level it is at now, not a mix with the level before (orchestrator history CONFIG).",
)
@click.option(
    "--reference",
    "reference_file",
    type=click.Path(dir_okay=False),
    help="Check each run's per-epoch mAP against this reference file (JSON, docs/metrics.md) "
    "instead of its configuration's last 5 runs.",
)
@click.option(
    "--target",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="The mAP a run must reach (default: 95 % of the references' mean final mAP).",
)
@click.option(
    "--last",
    type=click.IntRange(1, 100_000),
    default=10,
    show_default=True,
    help="A configuration is the mean of its last N succeeded runs.",
)
@click.pass_obj
def compare(
    app: AppContext,
    items: tuple[str, ...],
    output: str,
    fail_below: tuple[str, ...],
    fail_above: tuple[str, ...],
    require_significant: bool,
    since_change: bool,
    reference_file: str | None,
    target: float | None,
    last: int,
) -> None:
    """Compare runs or configurations: every metric with its change from the first (the
    baseline), and what differs: first the setup (vendor, topology, cluster, backend, runtime,
    precision, fix_hp; a warning on stderr when any differs), then the environment fields and
    hyper-parameters.

    ITEMS are run ids (or unambiguous prefixes) or configurations VENDOR:TOPOLOGY:PRECISION
    [:FIX_HP] (the mean of their last --last succeeded runs).

    \b
    Examples:
      orchestrator compare 20260114-101500 20260120-093000
      orchestrator compare metax-c500:2x8:amp metax-c500:2x8:amp:bs=32 --format markdown
      orchestrator compare BASELINE_RUN NEW_RUN --fail-below p_core=-5%   # exit 1 on a regression
      orchestrator compare nvidia:2x8:amp:/ nvidia:2x8:amp:/ --last 5 \\
          --fail-below p_core=-2% --require-significant
    """
    from orchestrator.reports.compare import breaches, parse_threshold, render, unlike_warning
    from orchestrator.reports.compare import compare as compare_sides
    from orchestrator.reports.compare_sides import load_sides

    thresholds = [parse_threshold(t, significant=require_significant) for t in fail_below]
    thresholds += [
        parse_threshold(t, above=True, significant=require_significant) for t in fail_above
    ]
    from orchestrator.convergence import load_reference_file
    from orchestrator.reports.convergence_reads import convergence_checks
    from orchestrator.store.config_queries import runs_of

    references, file_target = (
        load_reference_file(reference_file) if reference_file else (None, None)
    )
    with app.open_store() as store, store.reading() as conn:
        sides = load_sides(conn, list(items), last, since_change)
        rows = runs_of(conn, [s.run_ids[0] for s in sides if s.kind == "run"])
        checks = convergence_checks(conn, rows, references, target or file_target)
    comparison = compare_sides(sides)
    convergence = [checks[s.label] for s in sides if s.kind == "run" and s.label in checks]
    warning = unlike_warning(comparison)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    failed = breaches(comparison, thresholds)
    if output == "table":
        _print_tables(comparison, convergence)
    else:
        click.echo(render(comparison, output, failed, convergence), nl=False)
    for breach in failed:
        click.echo(f"regression: {breach.describe()}", err=True)
    for found in convergence:
        if found.flagged:
            click.echo(f"convergence: {found.describe()}", err=True)
    if failed:
        sys.exit(REGRESSION_EXIT)


def _print_tables(comparison: Comparison, convergence: Sequence[Convergence] = ()) -> None:
    from orchestrator.reports.compare import difference_rows, metric_columns, metric_rows
    from orchestrator.reports.report import console, table

    out = console()
    out.print(table("metrics", metric_columns(comparison), metric_rows(comparison)))
    differences = difference_rows(comparison)
    if differences:
        headers = ["differs", *[s.label for s in comparison.sides]]
        out.print(table("differences", headers, differences))
    else:
        out.print("same setup, environment and hyper-parameters")
    if convergence:
        out.print("convergence (per-epoch mAP against the references)", style="bold")
        for found in convergence:
            out.print(found.describe(), markup=False)


def register(cli: click.Group) -> None:
    cli.add_command(compare)
