"""/runs (the history: filters, sorting, pages) and /runs/RUN_ID (everything about one run)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.reports.convergence_reads import convergence_checks
from orchestrator.states import PRECISIONS, RUN_STATUSES
from orchestrator.store.config_queries import runs_of
from orchestrator.store.environments import describe_ib
from orchestrator.store.follower import followers_now
from orchestrator.store.metrics import mem_label
from orchestrator.store.queries import run_detail
from orchestrator.store.stragglers import stored_line
from orchestrator.store.web_queries import (
    RUN_SORTS,
    configuration_runs,
    filter_options,
    monitor_series,
    rank_zero_config,
    runs_page,
)
from orchestrator.web import params
from orchestrator.web.context import reading, render
from orchestrator.web.present import epoch_charts, monitor_charts

# The runs table's sortable columns: (sort key, header).
RUN_COLUMNS = (
    ("run", "run"),
    ("status", "status"),
    ("config", "config"),
    ("precision", "precision"),
    ("e2e_time", "e2e_time (s)"),
    ("p_whole", "p_whole (img/s)"),
    ("p_train", "p_train (img/s)"),
    ("p_core", "p_core (img/s)"),
    ("map", "mAP"),
    ("submitted", "submitted (UTC)"),
)
# The environment table of the run page: label -> run_nodes column.
NODE_FIELDS = (
    ("address", "address"),
    ("OS", "os"),
    ("kernel", "kernel"),
    ("CPU", "cpu"),
    ("memory", "mem_total_bytes"),
    ("accelerator", "accelerator_model"),
    ("accelerators", "accelerator_count"),
    ("driver", "driver"),
    ("Docker", "docker"),
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("Python", "python"),
    ("network", "ib"),
    ("captured", "captured_at"),
)


def runs(request: Request) -> Response:
    chosen = params.run_filter(request.query_params)
    with reading(request) as conn:
        page = runs_page(conn, chosen)
        options = filter_options(conn)
        running = [r["run_id"] for r in page.rows if r["status"] == "running"]
        followers = followers_now(conn, running)
    return render(
        request,
        "runs.html",
        page=page,
        followers=followers,
        chosen=chosen,
        options=options,
        statuses=RUN_STATUSES,
        precisions=PRECISIONS,
        columns=RUN_COLUMNS,
        sorts=tuple(RUN_SORTS),
    )


def run(request: Request) -> Response:
    ref = request.path_params["run_id"]
    with reading(request) as conn:
        detail = run_detail(conn, ref)
        run_id = detail.run["run_id"]
        resolved = rank_zero_config(conn, run_id)
        series = monitor_series(conn, run_id)
        siblings = configuration_runs(conn, detail.run)
        follower = followers_now(conn, [run_id]).get(run_id)
        convergence = convergence_checks(conn, runs_of(conn, [run_id])).get(run_id)
    charts = epoch_charts({run_id: detail.epochs})
    return render(
        request,
        "run.html",
        run=detail.run,
        detail=detail,
        follower=follower,
        nodes=_node_table(detail.nodes),
        ranks=[_rank_row(r) for r in detail.ranks],
        resolved=resolved,
        epoch_charts=charts,
        monitor_charts=monitor_charts(series),
        siblings=siblings,
        failure=detail.run["failure"] or {},
        convergence=convergence,
        stragglers=stored_line(detail.run["stragglers"]),
    )


def _node_table(nodes: list[Any]) -> list[tuple[str, list[str]]]:
    rows = []
    for label, key in NODE_FIELDS:
        values = []
        for node in nodes:
            value = node[key]
            if key == "ib":
                value = describe_ib(value) or ""
            elif key == "mem_total_bytes" and value is not None:
                value = f"{value / (1 << 30):,.0f} GiB"
            elif key == "captured_at" and value is not None:
                value = value.strftime("%Y-%m-%d %H:%M UTC")
            values.append("" if value is None else str(value))
        if any(values):
            rows.append((label, values))
    return rows


def _rank_row(rank: Any) -> dict[str, Any]:
    return {**rank, "mem": mem_label(rank["peak_reserved_bytes"], rank["total_mem_bytes"])}


ROUTES = [Route("/runs", runs), Route("/runs/{run_id}", run)]
