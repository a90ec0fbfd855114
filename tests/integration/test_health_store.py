"""The health rows in a real store (SQLite, and PostgreSQL where the test services run): a
check and its figures written, a node's history read back (own medians skip failing figures),
the gate's figures on `runs show` and the run page, a node's page escaped, quarantine skipped
by the scheduler and lifted by release and by expiry."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from orchestrator.store import health as health_rows
from orchestrator.store import open_store, quarantine, upgrade_store
from orchestrator.store.models import NodeQuarantine

RUN = "20260113-101500-1x8-metax"
XSS = "<img src=x onerror=alert('n')>"  # no slash: it is also a node page's path


def _figure(check: str, node: str | None, value: float, verdict: str, **extra: object) -> dict:
    return {
        "check_name": check,
        "node_name": node,
        "peer_name": extra.get("peer"),
        "device_index": extra.get("device"),
        "ranks": extra.get("ranks"),
        "value": value,
        "unit": "GFLOP/s" if check == "compute" else "GB/s",
        "expected": extra.get("expected"),
        "expected_from": "peers' median",
        "fraction": 0.7,
        "verdict": verdict,
        "exempt": False,
    }


def _check(at: datetime, gated: str | None, ok: bool, summary: str) -> dict:
    return {
        "cluster": "lab",
        "topology": "2x1",
        "nodes": ["n1", XSS],
        "gated_run_id": gated,
        "backend": "gloo",
        "precision": "fp32",
        "started_at": at,
        "took_s": 3.5,
        "ok": ok,
        "blamed": [] if ok else [XSS],
        "summary": summary,
    }


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, fixture_runs: Path) -> str:
    url = str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    upgrade_store(url)
    with open_store(url) as store:
        store.ingest([fixture_runs / RUN])
    return url


def test_checks_history_gate_pages_and_quarantine(store_url: str, run_cli) -> None:
    t0 = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)
    with open_store(store_url) as store, store.transaction() as conn:
        for i, value in enumerate([20.0, 21.0, 3.0, 22.0]):
            verdict = "fail" if value < 10 else "ok"
            health_rows.record_check(
                conn,
                _check(t0 + timedelta(minutes=i), None, verdict == "ok", f"check {i}"),
                [_figure("compute", "n1", value, verdict, device=0)],
            )
        gate_id = health_rows.record_check(
            conn,
            _check(t0 + timedelta(hours=1), RUN, False, f"FAIL {XSS}; pair min 0.005 GB/s"),
            [_figure("pair", "n1", 0.005, "fail", peer=XSS, expected=0.025)],
        )
    with open_store(store_url) as store, store.reading() as conn:
        history = health_rows.passing_history(conn, "lab", ["n1"], "fp32", 5)
        gate = health_rows.run_gate(conn, RUN)
        figures = health_rows.node_figures(conn, XSS)
    # newest first, the failing 3.0 left out
    assert history[("compute", "n1", None, 0, None)] == [22.0, 21.0, 20.0]
    assert [c["id"] for c in gate] == [gate_id] and gate[0]["blamed"] == [XSS]
    assert gate[0]["figures"][0]["peer_name"] == XSS and gate[0]["figures"][0]["value"] == 0.005
    assert [f["check_name"] for f in figures] == ["pair"] and figures[0]["gated_run_id"] == RUN

    shown = run_cli("--db", store_url, "runs", "show", RUN)
    assert shown.exit_code == 0
    assert f"FAIL {XSS}; pair min 0.005 GB/s (nodes n1, {XSS}; check {gate_id})" in shown.out
    doc = json.loads(run_cli("--db", store_url, "runs", "show", RUN, "--format", "json").out)
    assert doc["health"][0]["figures"][0]["expected"] == 0.025

    if store_url.startswith("sqlite"):  # the pages on Postgres need a SELECT-only role
        _pages(store_url)
    _report_and_quarantine(store_url, run_cli, t0, gate_id)


def _pages(store_url: str) -> None:
    from orchestrator.web.app import create_app

    with TestClient(create_app(store_url), raise_server_exceptions=False) as client:
        run_page = client.get(f"/runs/{RUN}").text
        node_page = client.get("/nodes/n1")
        xss_page = client.get("/nodes/%3Cimg%20src=x%20onerror=alert('n')%3E")
    assert "FAIL &lt;img src=x onerror=alert(&#39;n&#39;)&gt;; pair min" in run_page
    assert XSS not in run_page and XSS not in xss_page.text and xss_page.status_code == 200
    assert xss_page.text.count("onerror=alert(&#39;n&#39;)") >= 2  # the title and the pair
    assert node_page.status_code == 200 and "not quarantined" in node_page.text
    assert node_page.text.count('class="verdict-fail"') == 2  # the 3.0 and the slow pair
    assert "22" in node_page.text and f'href="/runs/{RUN}"' in node_page.text


def _report_and_quarantine(store_url: str, run_cli, t0: datetime, gate_id: int) -> None:
    before = run_cli("--db", store_url, "report").out
    assert "fabric health" not in before  # a refused gate is not the run's environment
    with open_store(store_url) as store, store.transaction() as conn:
        health_rows.record_check(
            conn,
            _check(t0 + timedelta(hours=2), RUN, True, "ok"),
            [
                _figure("allreduce", None, 0.0241, "ok", ranks=2),
                _figure("pair", "n1", 0.0236, "ok", peer="n3"),
                _figure("compute", "n1", 30.5, "ok", device=0),
            ],
        )
    report = run_cli("--db", store_url, "report").out
    line = "fabric health (gate): 1 of 1 run(s) gated, allreduce min 0.0241 GB/s, pair min "
    assert line + "0.0236 GB/s, compute min 30.5 GFLOP/s" in report

    with open_store(store_url) as store:
        with store.transaction() as conn:
            quarantine.quarantine(conn, "lab", ["n2"], "health gate: n2 slow", 3600.0, gate_id)
        with store.reading() as conn:
            from orchestrator.store.queue import read_busy

            busy = read_busy(conn)
            held = quarantine.active(conn, "lab")
        assert busy[("lab", "n2")].startswith("quarantined until ")
        assert [(q.node, q.reason) for q in held] == [("n2", "health gate: n2 slow")]
        with store.transaction() as conn:  # expired: no longer held
            conn.execute(
                update(NodeQuarantine).values(
                    expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)
                )
            )
        with store.reading() as conn:
            assert quarantine.active(conn) == [] and ("lab", "n2") not in read_busy(conn)
        with store.transaction() as conn:
            quarantine.quarantine(conn, "lab", ["n2"], "again", 60.0)
            assert quarantine.release(conn, "lab", "n2") == 1
            assert quarantine.release(conn, "lab", "n2") == 0
