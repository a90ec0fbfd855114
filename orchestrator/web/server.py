"""Serving the pages: the address rules, the socket, uvicorn.

Binds 127.0.0.1 unless told otherwise; any other address needs a token (or a reverse proxy in
front that does the authentication, with this server on 127.0.0.1: docs/web.md). The token
comes from the environment or a file (a command line is visible to everyone in `ps`). Requests
must name the server in their Host header (its address, its host names, or --allowed-host).
The socket is bound here, before uvicorn starts, so that a port in use is one line, not a log
of errors.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from orchestrator.errors import ConfigError

MIN_TOKEN_LENGTH = 16
TOKEN_HINT = (
    "export ORCHESTRATOR_WEB_TOKEN=\"$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')\""
    " (or --token-file FILE)"
)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token: str | None, token_file: str | None) -> str | None:
    """The token from --token / $ORCHESTRATOR_WEB_TOKEN, or the first line of a file."""
    if token_file is None:
        return token
    if token is not None:
        raise ConfigError(
            "both a token and a token file are given",
            "use one: $ORCHESTRATOR_WEB_TOKEN or --token-file",
        )
    try:
        lines = Path(token_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the token file {token_file}: {_os_reason(exc)}",
            "check the path and its permissions",
        ) from None
    first = lines[0].strip() if lines else ""
    if not first:
        raise ConfigError(f"the token file {token_file} is empty", f"write a token: {TOKEN_HINT}")
    return first


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The names a request's Host header may give: the bind address, the loopback names when
    it is loopback, this machine's names and addresses when it is every address, and `extra`
    (--allowed-host: a reverse proxy's public name, a DNS alias)."""
    names = {h.strip().lower().strip("[]") for h in extra if h.strip()}
    if host not in WILDCARDS:
        names.add(host.lower().strip("[]"))
    if is_loopback(host) or host in WILDCARDS:
        names.update(LOOPBACK_NAMES)
    if not is_loopback(host):
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
            try:
                names.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
            except socket.gaierror:
                pass
    return tuple(sorted(names))


def check_access(host: str, token: str | None) -> None:
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"the token is {len(token)} characters long; it needs at least {MIN_TOKEN_LENGTH}",
            f"make one with {TOKEN_HINT}",
        )
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"serving on {host} would show the results to anyone who can reach it",
            f"set a token: {TOKEN_HINT}; or keep 127.0.0.1 behind a reverse proxy (docs/web.md)",
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
    extra_hosts: Iterable[str] = (),
) -> None:
    """Run until Ctrl-C or SIGTERM. The access log is off: a ?token= would end up in it."""
    import uvicorn

    from orchestrator.web.app import create_app

    check_access(host, token)
    app = create_app(url, token, refresh_s, allowed_hosts(host, extra_hosts))
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


def _os_reason(exc: OSError | UnicodeDecodeError) -> str:
    """The OS's words for a failed read (no errno prefix), else the exception's own."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
