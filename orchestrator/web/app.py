"""The results pages as a Starlette application over a read-only connection to the store.

`create_app(url, token, allowed_hosts=)` is what `orchestrator serve` runs under uvicorn and what the tests
call. Handlers are plain functions (Starlette runs them in its thread pool); each reads through
`reading(request)` and renders a Jinja2 template with autoescaping on, so every value from the
store is escaped. docs/web.md describes the pages.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Collection
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from orchestrator.errors import StoreError
from orchestrator.store.readonly import read_only_engine
from orchestrator.web import pages_health, pages_queue, pages_reports, pages_runs
from orchestrator.web.context import WebState, render
from orchestrator.web.guard import Guard
from orchestrator.web.params import query_string
from orchestrator.web.present import FILTERS

HERE = Path(__file__).resolve().parent
log = logging.getLogger("orchestrator.web")


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    env.globals["query_string"] = query_string
    return Jinja2Templates(env=env)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return render(
        request,
        "error.html",
        status_code=exc.status_code,
        status=exc.status_code,
        message=exc.detail,
    )


async def _store_error(request: Request, exc: Exception) -> Response:
    # StoreError is what the reads raise for a user's reference: an unknown or ambiguous run.
    message = exc.one_line() if isinstance(exc, StoreError) else "not found"
    return render(request, "error.html", status_code=404, status=404, message=message)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The trace goes to the server's log only; the page says nothing of the code.
    log.error("error on %s:\n%s", request.url.path, "".join(traceback.format_exception(exc)))
    return render(
        request,
        "error.html",
        status_code=500,
        status=500,
        message="internal error; the server's log has the details",
    )


def _home(request: Request) -> Response:
    return RedirectResponse("/runs", status_code=307)


def create_app(
    url: str,
    token: str | None = None,
    refresh_s: float = 5.0,
    allowed_hosts: Collection[str] | None = None,
) -> Starlette:
    """`allowed_hosts`: the Host names served (web/guard.py); None: any, as for the tests'
    client (`orchestrator serve` always names them)."""
    from orchestrator.store.engine import redact_url

    routes = [
        Route("/", _home),
        *pages_runs.ROUTES,
        *pages_reports.ROUTES,
        *pages_queue.ROUTES,
        *pages_health.ROUTES,
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _http_error,
            StoreError: _store_error,
            Exception: _internal_error,
        },
    )
    app.state.web = WebState(read_only_engine(url), _templates(), redact_url(url), refresh_s)
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts)
    return app
