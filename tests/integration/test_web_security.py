"""The results server against the web: DNS rebinding (a Host that is not the server's), the
session cookie (not the token; HttpOnly, SameSite, Secure, an expiry), the token from the
environment or a file (never on the command line), far-out dates, and the security headers on
every response, refusals and errors included. Real `orchestrator serve` (uvicorn) processes on
loopback addresses, and the app under Starlette's client for the cookie's details."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from orchestrator.web.guard import COOKIE, SESSION_S, Guard, host_name
from tests.support.web_fixtures import Served, serving

TOKEN = "a-token-long-enough-1234"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from orchestrator.store import upgrade_store

    url = f"sqlite:///{tmp_path_factory.mktemp('web-security') / 'results.db'}"
    upgrade_store(url)
    return url


def _get(
    served: Served, path: str, host: str | None = None, **headers: str
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(served.host, served.port, timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", host or f"{served.host}:{served.port}")
    for name, value in headers.items():
        conn.putheader(name.replace("_", "-"), value)
    conn.endheaders()
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _secured(response: http.client.HTTPResponse | object) -> bool:
    headers = response.headers  # type: ignore[attr-defined]
    return (
        "frame-ancestors 'none'" in headers.get("content-security-policy", "")
        and headers.get("x-content-type-options") == "nosniff"
        and headers.get("referrer-policy") == "no-referrer"
        and headers.get("x-frame-options") == "DENY"
    )


def test_a_host_that_is_not_the_servers_gets_400_dns_rebinding(
    empty_store: str, tmp_path: Path
) -> None:
    with serving(empty_store, tmp_path, host="127.0.0.2") as served:
        assert _get(served, "/runs").status == 200
        evil = _get(served, "/runs", host="evil.example")
        assert evil.status == 400 and _secured(evil)
        assert _get(served, "/runs", host=f"evil.example:{served.port}").status == 400
        assert _get(served, "/static/app.js", host="evil.example").status == 400
        assert _get(served, "/runs", host="localhost").status == 200  # a loopback name
    with serving(
        empty_store, tmp_path, "--allowed-host", "results.lab.example", host="127.0.0.2"
    ) as served:
        assert _get(served, "/runs", host="results.lab.example").status == 200
        assert _get(served, "/runs", host="evil.example").status == 400


def _cmdline(served: Served) -> str:
    return Path(f"/proc/{served.process.pid}/cmdline").read_bytes().decode().replace("\0", " ")


def test_the_token_comes_from_the_environment_not_the_command_line(
    empty_store: str, tmp_path: Path
) -> None:
    env = {"ORCHESTRATOR_WEB_TOKEN": TOKEN}
    with serving(empty_store, tmp_path, host="127.0.0.3", env=env) as served:
        assert TOKEN not in _cmdline(served)  # what `ps` shows
        refused = _get(served, "/runs")
        assert refused.status == 401 and _secured(refused)
        assert _get(served, "/runs", Authorization=f"Bearer {TOKEN}").status == 200


def test_the_token_comes_from_a_file(empty_store: str, tmp_path: Path) -> None:
    token_file = tmp_path / "web.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with serving(empty_store, tmp_path, "--token-file", str(token_file), host="127.0.0.3") as s:
        assert TOKEN not in _cmdline(s)
        assert _get(s, "/runs").status == 401
        assert _get(s, "/runs", Authorization=f"Bearer {TOKEN}").status == 200
        link = _get(s, f"/runs?token={TOKEN}")
        assert link.status == 303 and TOKEN not in link.headers["set-cookie"]


def test_a_bad_token_file_is_one_line(empty_store: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "empty.token").write_text("\n")
    for token_file, words in (
        (tmp_path / "missing.token", "cannot read the token file"),
        (tmp_path / "empty.token", "is empty"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", "--db", empty_store, "serve"]
            + ["--token-file", str(token_file)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0 and words in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2


@pytest.fixture(scope="module")
def tokened(empty_store: str) -> Iterator[TestClient]:
    from orchestrator.web.app import create_app

    app = create_app(empty_store, token=TOKEN, allowed_hosts=("testserver",))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _set_cookie(client: TestClient, **headers: str) -> str:
    client.cookies.clear()
    link = client.get(f"/runs?token={TOKEN}", follow_redirects=False, headers=headers)
    assert link.status_code == 303
    return link.headers["set-cookie"]


def test_the_session_cookie_is_not_the_token_and_has_its_attributes(tokened: TestClient) -> None:
    cookie = _set_cookie(tokened)
    value = re.match(rf"{COOKIE}=([^;]+);", cookie)
    assert value is not None and TOKEN not in cookie
    attributes = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")[1:]}
    assert "httponly" in attributes
    assert attributes["samesite"].strip().lower() == "samesite=strict"
    assert attributes["max-age"].strip() == f"Max-Age={SESSION_S}"
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back
    assert tokened.get("/runs").status_code == 200  # the session cookie lets it in
    over_tls = _set_cookie(tokened, **{"X-Forwarded-Proto": "https"})
    assert "secure" in over_tls.lower().replace("samesite", "")


def test_forged_expired_and_token_cookies_are_refused(tokened: TestClient) -> None:
    guard = Guard(lambda *a: None, TOKEN)  # type: ignore[arg-type, return-value]
    fresh = guard.new_session()
    assert guard.valid_session(fresh)
    assert not guard.valid_session(guard.new_session(now=0.0))  # expired long ago
    body, _, _ = fresh.rpartition(".")
    assert not guard.valid_session(f"{body}.{'0' * 64}")
    longer = body.rsplit(".", 1)[0] + ".99999999999"  # a later expiry, the old signature
    assert not guard.valid_session(f"{longer}.{fresh.rpartition('.')[2]}")
    assert not Guard(lambda *a: None, TOKEN + "x").valid_session(fresh)  # type: ignore[arg-type, return-value]
    for name, value, status in (
        (COOKIE, fresh, 200),  # the client sends what is set here
        (COOKIE, f"{body}.{'0' * 64}", 401),
        ("orchestrator_token", TOKEN, 401),  # the old cookie, the token itself
    ):
        tokened.cookies.clear()
        tokened.cookies.set(name, value)
        assert tokened.get("/runs").status_code == status, name


@pytest.mark.parametrize(
    "query", ["since=99999999d", "until=9999-12-31", "since=999999999w", "until=99999999999h"]
)
def test_a_far_out_date_is_400(tokened: TestClient, query: str) -> None:
    response = tokened.get(f"/runs?{query}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400 and "is too far out" in response.text


def test_security_headers_on_every_response(tokened: TestClient) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    tokened.cookies.clear()
    responses = {
        "200": tokened.get("/runs", headers=bearer),
        "303": tokened.get(f"/runs?token={TOKEN}", follow_redirects=False),
    }
    tokened.cookies.clear()
    responses |= {
        "401": tokened.get("/runs", headers={"Authorization": "Bearer nope"}),
        "405": tokened.post("/runs", headers=bearer),
        "400 host": tokened.get("/runs", headers={**bearer, "Host": "evil.example"}),
        "400 filter": tokened.get("/runs?since=yesterday", headers=bearer),
        "404": tokened.get("/runs/no-such-run", headers=bearer),
        "static": tokened.get("/static/app.js", headers=bearer),
    }
    codes = {name: r.status_code for name, r in responses.items()}
    assert codes == {
        "200": 200,
        "303": 303,
        "401": 401,
        "405": 405,
        "400 host": 400,
        "400 filter": 400,
        "404": 404,
        "static": 200,
    }
    assert [name for name, r in responses.items() if not _secured(r)] == []
    assert "cache-control" not in responses["static"].headers  # static files may be cached


@pytest.mark.parametrize(
    "header, name",
    [
        ("127.0.0.1:8150", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[::1]:8150", "::1"),
        ("::1", "::1"),
        ("evil.example:80", "evil.example"),
        ("", ""),
    ],
)
def test_host_names(header: str, name: str) -> None:
    assert host_name(header) == name


def test_the_names_a_server_answers_to() -> None:
    import socket

    from orchestrator.web.server import allowed_hosts

    assert allowed_hosts("127.0.0.1") == ("127.0.0.1", "::1", "localhost")
    assert allowed_hosts("127.0.0.2", ["Results.Lab.example"]) == (
        "127.0.0.1",
        "127.0.0.2",
        "::1",
        "localhost",
        "results.lab.example",
    )
    every = allowed_hosts("0.0.0.0")
    assert "0.0.0.0" not in every and "localhost" in every
    assert socket.gethostname().lower() in every
    assert "evil.example" not in every
