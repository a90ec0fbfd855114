"""What every request passes before a page: only GET (and HEAD), the token when the server has
one, and on the way out the server time and headers that keep the pages to themselves.

A token arrives as `Authorization: Bearer T`, as the `orchestrator_token` cookie, or once as
`?token=T`, which sets that cookie (HttpOnly, SameSite=Strict) and redirects to the same URL
without it, so the token stays out of the address bar, the history and pasted links.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "orchestrator_token"
ALLOWED_METHODS = ("GET", "HEAD")
# Scripts and styles from this server only: Chart.js and app.js ship in the package (no CDN).
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)


class Guard:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        response = self._refusal(scope)
        if response is not None:
            await response(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                spent = (time.perf_counter() - began) * 1000.0
                headers.append((b"server-timing", f"app;dur={spent:.2f}".encode()))
                for name, value in SECURITY_HEADERS:
                    if not (static and name == b"cache-control"):
                        headers.append((name, value))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> Response | None:
        if scope["method"] not in ALLOWED_METHODS:
            return PlainTextResponse(
                "405 method not allowed: the results pages are read-only (GET only)\n",
                status_code=405,
                headers={"Allow": ", ".join(ALLOWED_METHODS)},
            )
        if self.token is None:
            return None
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None and self._matches(given):
            kept = [(k, v) for k, v in parse_qsl(request.url.query) if k != "token"]
            # One leading slash: "//host/..." would send the browser to another site.
            target = "/" + request.url.path.lstrip("/") + (f"?{urlencode(kept)}" if kept else "")
            redirect = RedirectResponse(target, status_code=303)
            redirect.set_cookie(COOKIE, given, httponly=True, samesite="strict")
            return redirect
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        for candidate in (bearer, request.cookies.get(COOKIE)):
            if candidate is not None and self._matches(candidate):
                return None
        return PlainTextResponse(
            "401 unauthorized: this server needs its token "
            "(open the link with ?token=..., or send Authorization: Bearer ...)\n",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="orchestrator"'},
        )

    def _matches(self, candidate: str) -> bool:
        if self.token is None:
            return False
        return hmac.compare_digest(candidate.encode(), self.token.encode())
