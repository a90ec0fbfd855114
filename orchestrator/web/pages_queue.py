"""/queue (what runs now and where, what waits, each campaign's progress; the page refreshes
itself from /queue?part=1 every few seconds), /campaigns (every campaign's counts per status)
and /campaigns/ID (one campaign and its runs)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.clock import utcnow
from orchestrator.states import RUN_STATUSES
from orchestrator.store.web_queries import (
    RunFilter,
    campaign_progress,
    campaign_spec,
    queue_state,
    runs_page,
)
from orchestrator.web import params
from orchestrator.web.context import reading, render, state
from orchestrator.web.present import when

# The campaign progress bar's parts, in order.
PROGRESS = ("succeeded", "failed", "lost", "cancelled", "running", "queued")


def queue(request: Request) -> Response:
    with reading(request) as conn:
        current = queue_state(conn)
        campaigns = campaign_progress(conn)
    template = "queue_part.html" if request.query_params.get("part") == "1" else "queue.html"
    return render(
        request,
        template,
        current=current,
        campaigns=campaigns,
        progress=PROGRESS,
        refresh_ms=int(state(request).refresh_s * 1000),
        now=when(utcnow()),
    )


def campaigns(request: Request) -> Response:
    """Every campaign with how many of its runs are in each status (read-only)."""
    with reading(request) as conn:
        found = campaign_progress(conn)
    return render(request, "campaigns.html", campaigns=found, progress=PROGRESS)


def campaign(request: Request) -> Response:
    campaign_id = request.path_params["campaign_id"]
    page = params.integer(request.query_params, "page", 1, 1, 1_000_000)
    with reading(request) as conn:
        found = campaign_progress(conn, campaign_id)
        if not found:
            raise HTTPException(404, f"no campaign {campaign_id!r} in the results store")
        spec = campaign_spec(conn, campaign_id)
        runs = runs_page(conn, RunFilter(campaign=campaign_id, page=page, per_page=100))
    return render(
        request,
        "campaign.html",
        campaign=found[0],
        spec=spec,
        page=runs,
        progress=PROGRESS,
        statuses=RUN_STATUSES,
    )


ROUTES = [
    Route("/queue", queue),
    Route("/campaigns", campaigns),
    Route("/campaigns/{campaign_id}", campaign),
]
