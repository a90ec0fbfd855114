"""Serving the pages: the address rules, the socket, uvicorn.

Binds 127.0.0.1 unless told otherwise; any other address needs a token (or a reverse proxy in
front that does the authentication, with this server on 127.0.0.1: docs/web.md). The socket is
bound here, before uvicorn starts, so that a port in use is one line, not a log of errors.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from orchestrator.errors import ConfigError

MIN_TOKEN_LENGTH = 16
TOKEN_HINT = "--token \"$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')\""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(host: str, token: str | None) -> None:
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"--token is {len(token)} characters long; it needs at least {MIN_TOKEN_LENGTH}",
            f"make one with {TOKEN_HINT}",
        )
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"serving on {host} would show the results to anyone who can reach it",
            f"pass {TOKEN_HINT}, or keep 127.0.0.1 behind a reverse proxy (docs/web.md)",
        )


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(
            f"--host {host!r} does not resolve: {exc.strerror}", "check the name"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}", "pick another --port"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    url: str,
    host: str,
    port: int,
    token: str | None,
    announce: Callable[[str], None],
    refresh_s: float = 5.0,
) -> None:
    """Run until Ctrl-C or SIGTERM. The access log is off: a ?token= would end up in it."""
    import uvicorn

    from orchestrator.web.app import create_app

    check_access(host, token)
    app = create_app(url, token, refresh_s)
    sock = bind(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    bound_port = sock.getsockname()[1]
    announce(
        f"serving {app.state.web.store_url} (read-only) at http://{shown_host}:{bound_port}/"
        + ("  (token required)" if token else "")
        + "  Ctrl-C stops"
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        app.state.web.engine.dispose()
