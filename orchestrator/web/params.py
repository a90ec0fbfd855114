"""The pages' query strings, parsed and checked: a bad value is a 400 that names the parameter
and how to write it. Every value goes on to the store as a bound parameter."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException

from orchestrator.errors import ConfigError
from orchestrator.reports.report import parse_since
from orchestrator.reports.stats import METRICS
from orchestrator.states import PRECISIONS, RUN_STATUSES
from orchestrator.store.web_queries import RUN_SORTS, RunFilter

MAX_TEXT = 200  # longer filter values are refused, not truncated


def text(params: QueryParams, name: str) -> str | None:
    value = params.get(name, "").strip()
    if len(value) > MAX_TEXT:
        raise HTTPException(400, f"{name} is longer than {MAX_TEXT} characters")
    return value or None


def choice(params: QueryParams, name: str, allowed: tuple[str, ...]) -> str | None:
    value = text(params, name)
    if value is not None and value not in allowed:
        raise HTTPException(400, f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


def integer(params: QueryParams, name: str, default: int, low: int, high: int) -> int:
    value = text(params, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise HTTPException(400, f"{name}={value!r} is not a whole number") from None
    if not low <= number <= high:
        raise HTTPException(400, f"{name}={number} is outside {low}..{high}")
    return number


def date(params: QueryParams, name: str, end_of_day: bool = False) -> datetime | None:
    """2026-01-01, an ISO time, or 90d / 12h / 2w (before now); `end_of_day` makes a plain
    date inclusive (until=2026-01-31 keeps the 31st)."""
    value = text(params, name)
    if value is None:
        return None
    try:
        parsed = parse_since(value)
        if end_of_day and parsed is not None and len(value) == 10:
            parsed += timedelta(days=1)
    except ConfigError:
        raise HTTPException(
            400, f"{name}={value!r} is not a date: write 2026-01-01, an ISO time, or 90d / 12h / 2w"
        ) from None
    except (OverflowError, ValueError):  # 99999999d, 9999-12-31 and a day more
        raise HTTPException(
            400, f"{name}={value!r} is too far out: write a date between 0001 and 9998"
        ) from None
    return parsed


def metric(params: QueryParams, default: str = "p_core") -> str:
    return choice(params, "metric", METRICS) or default


def run_filter(params: QueryParams) -> RunFilter:
    sort = choice(params, "sort", tuple(RUN_SORTS)) or "submitted"
    order = choice(params, "order", ("asc", "desc")) or "desc"
    return RunFilter(
        vendor=text(params, "vendor"),
        topology=text(params, "topology"),
        precision=choice(params, "precision", PRECISIONS),
        status=choice(params, "status", RUN_STATUSES),
        campaign=text(params, "campaign"),
        since=date(params, "since"),
        until=date(params, "until", end_of_day=True),
        text=text(params, "q"),
        sort=sort,
        descending=order == "desc",
        page=integer(params, "page", 1, 1, 1_000_000),
        per_page=integer(params, "per_page", 50, 1, 500),
    )


def query_string(params: Mapping[str, object] | QueryParams, **changes: object) -> str:
    """The page's query string with some parameters changed (None removes one); empty values
    are left out, so pasted links stay short."""
    pairs: list[tuple[str, str]] = []
    items = params.multi_items() if isinstance(params, QueryParams) else list(params.items())
    for key, value in items:
        if key not in changes and value not in ("", None) and key != "token":
            pairs.append((key, str(value)))
    for key, value in changes.items():
        if value is not None and value != "":
            pairs.append((key, str(value)))
    return urlencode(pairs)
