"""What every page handler shares: the read-only engine, the templates, reading and rendering."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

log = logging.getLogger("orchestrator.web")


@dataclass
class WebState:
    engine: Engine
    templates: Jinja2Templates
    store_url: str  # redacted
    refresh_s: float


def state(request: Request) -> WebState:
    found: WebState = request.app.state.web
    return found


@contextmanager
def reading(request: Request) -> Iterator[Connection]:
    """A read-only connection; a database error is a 503 page, not a stack trace."""
    try:
        with state(request).engine.connect() as conn:
            yield conn
    except SQLAlchemyError as exc:
        log.error("store read failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
        raise HTTPException(503, "the results store did not answer; try again") from None


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    web = state(request)
    context.setdefault("store_url", web.store_url)
    context.setdefault("params", request.query_params)
    return web.templates.TemplateResponse(request, template, context, status_code=status_code)
