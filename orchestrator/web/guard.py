"""What every request passes before a page: a Host header naming this server, only GET (and
HEAD), the token when the server has one; and on every response, refusals and errors included,
the server time and headers that keep the pages to themselves.

Host: a web site the browser visits can make its own name resolve to 127.0.0.1 (DNS
rebinding) and read the pages of a server without a token; the browser then sends that site's
name as Host, which is not one of this server's names (`allowed_hosts`), so it gets a 400.

A token arrives as `Authorization: Bearer T` (scripts), or once as `?token=T` (a link), which
sets a session cookie and redirects to the same URL without it, so the token stays out of the
address bar, the history and pasted links. The cookie is not the token: a random id, its
expiry and an HMAC keyed with the token (so it ends with the token, and a restart keeps it);
HttpOnly, SameSite=Strict, Max-Age, and Secure over TLS or behind a proxy that says
`X-Forwarded-Proto: https`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "orchestrator_session"
SESSION_S = 12 * 3600  # a session cookie's life; then the link with ?token= again
ALLOWED_METHODS = ("GET", "HEAD")
# Scripts and styles from this server only: Chart.js and app.js ship in the package (no CDN).
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)


def host_name(header: str) -> str:
    """The name in a Host header, without its port, lower case: "[::1]:8150" -> "::1"."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """`allowed_hosts`: the names a Host header may give (None: any, for an app embedded
    behind something that checks it; `orchestrator serve` always gives them)."""

    def __init__(
        self, app: ASGIApp, token: str | None, allowed_hosts: Collection[str] | None = None
    ) -> None:
        self.app = app
        self.token = token
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
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

        response = self._refusal(scope)
        if response is not None:
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> Response | None:
        request = Request(scope)
        if self.allowed is not None:
            given = host_name(request.headers.get("host", ""))
            if given not in self.allowed:
                return PlainTextResponse(
                    f"400 bad request: Host {given!r} is not a name of this server "
                    "(serve --allowed-host NAME adds one)\n",
                    status_code=400,
                )
        if scope["method"] not in ALLOWED_METHODS:
            return PlainTextResponse(
                "405 method not allowed: the results pages are read-only (GET only)\n",
                status_code=405,
                headers={"Allow": ", ".join(ALLOWED_METHODS)},
            )
        if self.token is None:
            return None
        given_token = request.query_params.get("token")
        if given_token is not None and self._matches(given_token):
            kept = [(k, v) for k, v in parse_qsl(request.url.query) if k != "token"]
            # One leading slash: "//host/..." would send the browser to another site.
            target = "/" + request.url.path.lstrip("/") + (f"?{urlencode(kept)}" if kept else "")
            redirect = RedirectResponse(target, status_code=303)
            redirect.set_cookie(
                COOKIE,
                self.new_session(),
                max_age=SESSION_S,
                httponly=True,
                samesite="strict",
                secure=_over_tls(request),
            )
            return redirect
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        if bearer is not None and self._matches(bearer):
            return None
        if self.valid_session(request.cookies.get(COOKIE, "")):
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

    def _sign(self, body: str) -> str:
        assert self.token is not None
        key = hashlib.sha256(b"orchestrator-web-session\0" + self.token.encode()).digest()
        return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()

    def new_session(self, now: float | None = None) -> str:
        """A session cookie's value: random id . expiry (unix seconds) . signature."""
        issued = time.time() if now is None else now
        body = f"{secrets.token_urlsafe(16)}.{int(issued + SESSION_S)}"
        return f"{body}.{self._sign(body)}"

    def valid_session(self, value: str, now: float | None = None) -> bool:
        body, _, signature = value.rpartition(".")
        expires = body.rpartition(".")[2]
        if not body or not expires.isdigit() or self.token is None:
            return False
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return False
        return int(expires) > (time.time() if now is None else now)


def _over_tls(request: Request) -> bool:
    """Served over TLS, or a proxy in front says so (Secure only makes the cookie stricter)."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"
