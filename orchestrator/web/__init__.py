"""`orchestrator serve`: read-only results pages over the store (the `web` extra: Starlette,
Jinja2, uvicorn; Chart.js ships in static/vendor/). Nothing here writes to the store, and only
the CLI imports this package. docs/web.md describes the pages and their security rules."""
