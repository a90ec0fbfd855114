"""/nodes/NODE: a node's health figures over time (docs/health.md) and its quarantine."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.store import health as health_rows
from orchestrator.store import quarantine
from orchestrator.web import params
from orchestrator.web.context import reading, render


def node(request: Request) -> Response:
    name = request.path_params["node"]
    limit = params.integer(request.query_params, "limit", 200, 1, 10_000)
    with reading(request) as conn:
        figures = health_rows.node_figures(conn, name, limit=limit)
        held = [q for q in quarantine.active(conn) if q.node == name]
    return render(request, "node.html", node=name, figures=figures, held=held)


ROUTES = [Route("/nodes/{node}", node)]
