"""/seed (the vendor case page's tables, with .md and .csv downloads), /compare, /scaling and
/history: the report's logic (report.py, report_stats.py, compare.py) on a page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from orchestrator.errors import ConfigError
from orchestrator.regressions import HISTORY_RUNS, flag_history
from orchestrator.reports.compare import METRICS, compare, difference_rows, unlike_warning
from orchestrator.reports.compare_sides import load_sides, oldest_first
from orchestrator.reports.history_changes import history_regressions, load_history
from orchestrator.reports.report import SEED_HEADERS, render_grouped_report, render_report
from orchestrator.reports.stats import group_rows, scaling_points, spread_of_moments
from orchestrator.reports.whole_report import whole_view
from orchestrator.states import PRECISIONS
from orchestrator.store.config_queries import (
    ConfigKey,
    configurations,
    flag_inputs,
    scaling_groups,
    succeeded_runs,
    whole_history_moments,
)
from orchestrator.store.epochs import epochs_of
from orchestrator.store.history import campaign_run_ids
from orchestrator.store.queries import (
    Selection,
    environment,
    run_warnings,
    seed_rows,
    with_energy,
)
from orchestrator.store.web_queries import filter_options
from orchestrator.web import params
from orchestrator.web.context import reading, render
from orchestrator.web.present import epoch_charts, history_chart, scaling_chart, vendors_chart

MAX_COMPARED = 8
HISTORY_TABLE_ROWS = 100
# The history page without `since` shows this many newest runs (chart, change points, flags):
# its cost stays flat however long the history grows; `since` shows every run from a date.
HISTORY_PAGE_RUNS = 1000


# -- seed table ----------------------------------------------------------------------------------


def _seed_data(request: Request, runs_listed: bool = False) -> dict[str, Any]:
    """The seed table's data; `runs_listed`: an output that lists every run (the CSV)."""
    q = request.query_params
    run_ids = tuple(q.getlist("run"))
    campaign = params.text(q, "campaign")
    grouped = q.get("group", "1") != "0"
    if grouped and not runs_listed and not run_ids and campaign is None and not q.get("since"):
        found = _whole_data(request)
        if found is not None:
            return found
    selection = Selection(
        vendor=params.text(q, "vendor"),
        topology=params.text(q, "topology"),
        precision=params.choice(q, "precision", PRECISIONS),
        since=params.date(q, "since"),
        run_ids=run_ids,
    )
    with reading(request) as conn:
        rows: list[Any] = []
        env = environment(conn, [])
        if campaign is not None:
            chosen = set(campaign_run_ids(conn, campaign, None if run_ids else "succeeded"))
            selection = Selection(
                vendor=selection.vendor,
                topology=selection.topology,
                precision=selection.precision,
                since=selection.since,
                run_ids=tuple(sorted(chosen & set(run_ids) if run_ids else chosen)),
            )
        if campaign is None or selection.run_ids:
            rows = with_energy(conn, seed_rows(conn, selection))  # J/image, as `report` has it
            env = environment(conn, selection)
        # a selection without a time, campaign or runs holds whole configurations: their
        # history for the flags is the rows themselves, not a second read of them
        whole = campaign is None and not run_ids and selection.since is None
        history = rows if whole else flag_inputs(conn, rows, HISTORY_RUNS)
        options = filter_options(conn)
        warnings = run_warnings(conn, [str(r["run_id"]) for r in rows])
    flagged = flag_history(history, HISTORY_RUNS)
    regressions = {
        str(r["run_id"]): flagged[str(r["run_id"])] for r in rows if r["run_id"] in flagged
    }
    return {
        "rows": rows,
        "env": env,
        "groups": group_rows(rows),
        "regressions": regressions,
        "warnings": warnings,
        "options": options,
        "grouped": grouped,
    }


def _whole_data(request: Request) -> dict[str, Any] | None:
    """Whole configurations grouped: from what the store keeps (reports/whole_report.py), a
    few rows per configuration; None while those rows are not current."""
    q = request.query_params
    with reading(request) as conn:
        view = whole_view(
            conn,
            params.text(q, "vendor"),
            params.text(q, "topology"),
            params.choice(q, "precision", PRECISIONS),
        )
        if view is None:
            return None
        options = filter_options(conn)
    return {
        "rows": [],
        "env": view.environment,
        "groups": view.groups,
        "regressions": view.regressions,
        "warnings": view.warnings,
        "options": options,
        "grouped": True,
    }


def seed(request: Request) -> Response:
    data = _seed_data(request)
    return render(
        request,
        "seed.html",
        **data,
        precisions=PRECISIONS,
        seed_headers=SEED_HEADERS,
        metrics=METRICS,
    )


def seed_download(request: Request) -> Response:
    output = "csv" if request.url.path.endswith(".csv") else "markdown"
    data = _seed_data(request, runs_listed=output == "csv")
    if data["grouped"]:
        text = render_grouped_report(
            data["env"],
            data["groups"],
            data["rows"],
            data["regressions"],
            output,
            warnings=data["warnings"],
        )
    else:
        text = render_report(
            data["env"], data["rows"], output, data["regressions"], warnings=data["warnings"]
        )
    media = "text/csv" if output == "csv" else "text/markdown"
    name = "seed-table.csv" if output == "csv" else "seed-table.md"
    return PlainTextResponse(
        text,
        media_type=f"{media}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# -- compare -------------------------------------------------------------------------------------


def compare_page(request: Request) -> Response:
    q = request.query_params
    items = [i for i in [*q.getlist("run"), *q.getlist("config")] if i.strip()]
    if len(items) > MAX_COMPARED:
        raise HTTPException(400, f"compare shows at most {MAX_COMPARED} runs or configurations")
    last = params.integer(q, "last", 10, 1, 1000)
    if len(items) < 2:
        return render(request, "compare.html", comparison=None, items=items, last=last)
    with reading(request) as conn:
        try:
            if q.get("base") == "oldest":
                items = oldest_first(conn, items)
            sides = load_sides(conn, items, last)
        except ConfigError as exc:
            raise HTTPException(400, exc.one_line()) from None
        run_ids = [s.run_ids[0] for s in sides if s.kind == "run"]
        epochs = epochs_of(conn, run_ids)
    comparison = compare(sides)
    return render(
        request,
        "compare.html",
        comparison=comparison,
        items=items,
        last=last,
        differences=difference_rows(comparison),
        warning=unlike_warning(comparison),
        epoch_charts=epoch_charts(epochs),
    )


# -- scaling and vendors -------------------------------------------------------------------------


def _series_name(row: Mapping[Any, Any]) -> str:
    """One line per hardware, precision and hyper-parameters, as the report's plot draws it."""
    fix_hp = row["fix_hp"]
    hyper = f" ({fix_hp})" if fix_hp and fix_hp != "/" else ""
    return f"{row['hardware']} {row['precision']}{hyper}"


def scaling(request: Request) -> Response:
    q = request.query_params
    metric = params.choice(q, "metric", ("p_core", "p_train")) or "p_core"
    with reading(request) as conn:
        groups = scaling_groups(
            conn,
            vendor=params.text(q, "vendor"),
            precision=params.choice(q, "precision", PRECISIONS),
            since=params.date(q, "since"),
        )
        options = filter_options(conn)
    measured = [
        (_series_name(g), g["topology"], float(g[f"{metric}_mean"]))
        for g in groups
        if g[f"{metric}_mean"] is not None
    ]
    points = scaling_points(measured)
    table = _scaling_table(groups, points, metric)
    return render(
        request,
        "scaling.html",
        metric=metric,
        table=table,
        scaling_chart=scaling_chart(points, metric),
        vendors_chart=vendors_chart(points, metric),
        options=options,
        precisions=PRECISIONS,
    )


def _scaling_table(
    groups: Sequence[Mapping[Any, Any]], points: Sequence[Any], metric: str
) -> list[dict[str, Any]]:
    by_key = {(p.series, p.topology): p for p in points}
    table = []
    for g in groups:
        point = by_key.get((_series_name(g), g["topology"]))
        mean, mean_sq, n = g[f"{metric}_mean"], g[f"{metric}_mean_sq"], int(g["n"])
        sd = None
        if mean is not None and n > 1:  # sample sd from the database's mean of squares
            sd = max(0.0, (float(mean_sq) - float(mean) ** 2) * n / (n - 1)) ** 0.5
        table.append(
            {
                "series": _series_name(g),
                "vendor": g["vendor"],
                "topology": g["topology"],
                "devices": int(g["nnodes"]) * int(g["nproc_per_node"]),
                "n": n,
                "mean": mean,
                "sd": sd,
                "min": g[f"{metric}_min"],
                "max": g[f"{metric}_max"],
                "ideal": point.ideal if point else None,
                "efficiency": point.efficiency if point else None,
            }
        )
    return table


# -- a configuration's history -------------------------------------------------------------------


def history(request: Request) -> Response:
    q = request.query_params
    metric = params.metric(q)
    fields = [params.text(q, name) for name in ("vendor", "config", "precision", "fix_hp")]
    since = params.date(q, "since")
    with reading(request) as conn:
        if not all(fields):
            return render(request, "history.html", key=None, configs=configurations(conn))
        key = ConfigKey(*[str(f) for f in fields])
        # without `since`: the newest runs, a fixed amount whatever the length of the history
        found = load_history(conn, key, since, None if since else HISTORY_PAGE_RUNS)
        regressions = history_regressions(conn, key, found.rows)
        # the whole history's size and level: its summary rows, not a pass over every run
        whole = whole_history_moments(conn, key).get(metric) if since is None else None
        total = succeeded_runs(conn, key) if since is None else len(found.rows)
    rows = found.rows
    if since is None:
        stats = spread_of_moments(whole) if whole else None
        interval = whole.interval() if whole else None
    else:
        stats = group_rows(rows)[0].stats(metric) if rows else None
        interval = found.interval(metric, False)
    return render(
        request,
        "history.html",
        key=key,
        metric=metric,
        metrics=METRICS,
        spec=history_chart(rows, regressions, metric, found.points),
        rows=list(reversed(rows))[:HISTORY_TABLE_ROWS],
        total=total,
        shown=len(rows),
        windowed=since is None and len(rows) < total,
        shown_from=rows[0]["finished_at"] if rows else None,
        regressions=regressions,
        stats=stats,
        interval=interval,
        current=found.interval(metric, True),
        changes=list(reversed(found.points)),
        starts={p.run_id: p for p in found.points},
    )


ROUTES = [
    Route("/seed", seed),
    Route("/seed.md", seed_download),
    Route("/seed.csv", seed_download),
    Route("/compare", compare_page),
    Route("/scaling", scaling),
    Route("/history", history),
]
