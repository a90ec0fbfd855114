"""Every route of the results pages, on SQLite and PostgreSQL (tests/support/web_fixtures.py
builds the store with `orchestrator ingest`): status codes, the numbers they show, filters,
sorting and pagination, escaping, 401 / 405, no stack trace, and a connection that cannot write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from sqlalchemy import select, text
from starlette.testclient import TestClient

from orchestrator.regressions import flag_history
from orchestrator.store import open_store
from orchestrator.store.config_queries import ConfigKey, configuration_history
from orchestrator.store.models import Run
from tests.support.web_fixtures import (
    CAMPAIGN_ID,
    MONITORED_RUN,
    QUEUED_RUN,
    REGRESSED_RUN,
    RUNNING_RUN,
    XSS,
    XSS_RUN,
)

ALL_RUNS = 25  # 4 recorded + 19 made + running + queued
TOKEN = "a-token-long-enough-1234"


@pytest.fixture(scope="module")
def client(web_store_url: str) -> Iterator[TestClient]:
    from orchestrator.web.app import create_app

    with TestClient(create_app(web_store_url), raise_server_exceptions=False) as c:
        yield c


def _runs(html: str) -> list[str]:
    return re.findall(r'<tr data-run="([^"]+)"', html)


def _stored(url: str, *columns: str, where: str = "1=1") -> list[tuple[object, ...]]:
    with open_store(url) as store, store.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(text(f"SELECT {', '.join(columns)} FROM runs WHERE {where}"))
        ]


def test_home_redirects_to_the_runs(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/runs"


def test_runs_are_newest_first_with_every_status(client: TestClient, web_store_url: str) -> None:
    response = client.get("/runs?per_page=100")
    assert response.status_code == 200
    shown = _runs(response.text)
    stored = _stored(web_store_url, "run_id", "submitted_at")
    with open_store(web_store_url) as store, store.engine.connect() as conn:
        expected = list(
            conn.scalars(select(Run.run_id).order_by(Run.submitted_at.desc(), Run.run_id.desc()))
        )
    assert len(stored) == ALL_RUNS
    assert shown == expected
    assert shown[0] == QUEUED_RUN and shown[1] == RUNNING_RUN
    assert f"({ALL_RUNS} runs)" in response.text
    assert "p_core (img/s)" in response.text and "e2e_time (s)" in response.text


@pytest.mark.parametrize(
    ("query", "count", "every"),
    [
        ("vendor=nvidia", 8, "nvidia"),
        ("status=failed", 2, "failed"),
        ("topology=1x1&precision=amp", 3, "1x1"),
        ("q=NCCL", 1, "NCCL"),
        ("q=100%25", 0, None),  # LIKE wildcards in the text are literal
        ("until=2026-01-13", 2, None),
        ("since=2026-01-26&until=2026-01-26", 2, "20260126"),
        (f"campaign={CAMPAIGN_ID}", 7, "nvidia"),
    ],
)
def test_runs_filters(
    client: TestClient, web_store_url: str, query: str, count: int, every: str | None
) -> None:
    response = client.get(f"/runs?{query}&per_page=100")
    assert response.status_code == 200, response.text
    shown = _runs(response.text)
    assert len(shown) == count
    assert f"({count} runs)" in response.text
    if every == "NCCL":
        assert shown == ["20260115-131500-2x8-metax-failed"]
    elif every is not None:
        for run_id in shown:
            row = response.text.split(f'data-run="{run_id}"', 1)[1].split("</tr>", 1)[0]
            assert every in run_id or every in row


def test_runs_sort_by_p_core_and_page(client: TestClient, web_store_url: str) -> None:
    stored = sorted(
        ((p, r) for r, p in _stored(web_store_url, "run_id", "p_core") if p is not None),
        reverse=True,
    )
    first = _runs(client.get("/runs?sort=p_core&order=desc&per_page=5").text)
    assert first == [r for _, r in stored[:5]]
    ascending = _runs(client.get("/runs?sort=p_core&order=asc&per_page=3").text)
    assert ascending == [r for _, r in sorted(stored)[:3]]
    # 25 runs, 10 a page: three pages, the last with 5; a page past the end shows the last.
    everything = _runs(client.get("/runs?per_page=100").text)
    page3 = client.get("/runs?per_page=10&page=3").text
    assert _runs(page3) == everything[20:]
    assert "page 3 of 3" in page3 and 'rel="next"' not in page3 and 'rel="prev"' in page3
    assert _runs(client.get("/runs?per_page=10&page=99").text) == everything[20:]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("sort=nope", "sort='nope' is not one of"),
        ("page=abc", "page='abc' is not a whole number"),
        ("per_page=100000", "per_page=100000 is outside 1..500"),
        ("status=sleeping", "status='sleeping' is not one of"),
        ("since=yesterday", "since='yesterday' is not a date"),
    ],
)
def test_runs_bad_parameters_are_400_with_the_reason(
    client: TestClient, query: str, words: str
) -> None:
    response = client.get(f"/runs?{query}")
    assert response.status_code == 400
    assert words.replace("'", "&#39;") in response.text


def test_run_page_shows_the_run(client: TestClient, web_store_url: str) -> None:
    run_id = "20260114-101500-2x8-metax"
    ((p_core, e2e),) = _stored(web_store_url, "p_core", "e2e_time_s", where=f"run_id = '{run_id}'")
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200
    assert f">{float(p_core):,.0f}<" in page.text  # 519 img/s, in the p_core (img/s) column
    assert f">{float(e2e):.1f}<" in page.text  # to 0.1 s, as `report` prints it
    ranks = page.text.split('id="ranks"', 1)[1].split("</table>", 1)[0]
    assert ranks.count("<tr>") == 1 + 16  # header + 16 ranks
    assert (
        "orchestrator submit 2x8 --precision fp32 --config metax-c500:2x8 --set epochs=2"
        in page.text
    )
    assert "InfiniBand, 2 x 200 Gb/sec (4X HDR)" in page.text
    assert "history of this configuration" in page.text
    # Epochs count from 1, in the table and on the charts' x axis, as in the CLI.
    table = page.text.split('id="epochs"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<tr>\s*<td class="num">(\d+)</td>', table) == ["1", "2"]
    charts = re.findall(
        r'<script type="application/json" id="epoch-chart-\d+">(.*?)</script>', page.text
    )
    xs = {p["x"] for c in charts for d in json.loads(c)["datasets"] for p in d["data"]}
    assert charts and xs == {1, 2}
    # A prefix of the id finds the run; an unknown one is a 404 that says so.
    assert client.get("/runs/20260114-1015").status_code == 200
    missing = client.get("/runs/no-such-run")
    assert missing.status_code == 404 and "no run &#39;no-such-run&#39;" in missing.text


def test_run_page_monitor_series_are_downsampled(client: TestClient) -> None:
    import json

    page = client.get(f"/runs/{MONITORED_RUN}").text
    blocks = re.findall(
        r'<script type="application/json" id="monitor-chart-\d+">(.*?)</script>', page
    )
    specs = [json.loads(b) for b in blocks]
    titles = [s["yLabel"] for s in specs]
    assert titles == [
        "device memory used (GiB)",
        "device power (W)",
        "device temperature (°C)",
        "device utilisation (%)",
        "host CPU (%)",
        "host memory used (GiB)",
    ]
    power = specs[1]
    assert len(power["datasets"]) == 16  # 2 nodes x 8 devices
    assert all(0 < len(d["data"]) <= 120 for d in power["datasets"])
    # 20 minutes every 30 s: 40 samples a series; the busy phase draws 340-346 W.
    assert max(p["y"] for d in power["datasets"] for p in d["data"]) <= 346
    assert min(p["y"] for d in power["datasets"] for p in d["data"][10:]) >= 340
    assert "(640 samples)" in page  # 16 series x 40


def test_failed_run_shows_reason_and_log_tail(client: TestClient) -> None:
    page = client.get("/runs/20260115-131500-2x8-metax-failed").text
    assert "rank 11 on me-node2 exited with code 1: DistBackendError" in page
    assert '<pre class="log" id="log-tail">torch.distributed.DistBackendError' in page


def test_store_values_are_escaped_everywhere(client: TestClient) -> None:
    escaped = "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;"
    for path in (
        f"/runs/{XSS_RUN}",
        "/runs?status=failed",
        f"/compare?run={XSS_RUN}&run={MONITORED_RUN}",
    ):
        page = client.get(path)
        assert page.status_code == 200, path
        assert XSS not in page.text, path
        assert escaped in page.text, path
    # Chart data and hidden inputs carry the same text as JSON/attributes, never as markup.
    assert "<script>alert" not in client.get("/runs?q=<script>alert").text


def test_seed_page_and_downloads_match_the_report_command(
    client: TestClient, web_store_url: str, run_cli: object
) -> None:
    page = client.get("/seed?vendor=metax&topology=2x8")
    assert page.status_code == 200
    assert "MXC500 2x8" in page.text and ">7<" in page.text  # n: 7 succeeded repeats
    assert f"{REGRESSED_RUN}</a>: p_core −" in page.text  # the flagged repeat
    markdown = client.get("/seed.md?vendor=metax&topology=2x8")
    assert markdown.headers["content-type"].startswith("text/markdown")
    report = run_cli("--db", web_store_url, "report", "--vendor", "metax", "--topology", "2x8")  # type: ignore[operator]
    assert report.exit_code == 0
    assert markdown.text == report.out
    csv = client.get("/seed.csv?vendor=metax&topology=2x8&group=0")
    per_run = run_cli(
        "--db",
        web_store_url,
        "report",
        "--vendor",
        "metax",
        "--topology",
        "2x8",
        "--no-group",
        "--format",
        "csv",
    )  # type: ignore[operator]
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text == per_run.out
    assert client.get("/seed?precision=fp64").status_code == 400
    # Only the regressed run selected: its flag needs the runs before the selection.
    late = client.get("/seed.md?vendor=metax&topology=2x8&since=2026-01-25")
    cli = run_cli(
        "--db",
        web_store_url,
        "report",
        "--vendor",
        "metax",
        "--topology",
        "2x8",
        "--since",
        "2026-01-25",
    )  # type: ignore[operator]
    assert late.text == cli.out
    assert f"{REGRESSED_RUN}: p_core -21%" in late.text


def test_compare_two_runs(client: TestClient, web_store_url: str) -> None:
    from orchestrator import units

    a, b = "20260113-101500-1x8-metax", "20260114-101500-2x8-metax"
    (pa,), (pb,) = (_stored(web_store_url, "p_core", where=f"run_id = '{r}'")[0] for r in (a, b))
    page = client.get(f"/compare?run={a}&run={b}")
    assert page.status_code == 200
    change = (float(pb) - float(pa)) / float(pa) * 100
    assert f"{change:+.1f} %" in page.text
    metrics = page.text.split('id="compare-metrics"', 1)[1].split("</table>", 1)[0]
    (ea,), (eb,) = (
        _stored(web_store_url, "e2e_time_s", where=f"run_id = '{r}'")[0] for r in (a, b)
    )
    # values as `report` prints them: e2e_time to 0.1 s (not '1497'), p_core to 3 digits
    for shown in (f"{float(ea):.1f}", f"{float(eb):.1f}", units.sig3(pa), units.sig3(pb)):
        assert f'<td class="num">{shown}</td>' in metrics, shown
    differences = page.text.split('id="compare-differences"', 1)[1].split("</table>", 1)[0]
    assert "--set batch_size" in differences and "--set lr" in differences
    assert "compare-chart-1" in page.text  # per-epoch curves overlaid
    one = client.get(f"/compare?run={a}")
    assert one.status_code == 200 and "Pick two or more runs" in one.text
    assert client.get(f"/compare?run={a}&run=nope").status_code == 404


def test_compare_two_configurations(client: TestClient) -> None:
    page = client.get("/compare?config=nvidia:2x8:amp&config=metax:2x8:fp32")
    assert page.status_code == 200
    assert "nvidia:2x8:amp (mean of 2 runs)" in page.text
    assert "metax:2x8:fp32 (mean of 7 runs)" in page.text
    bad = client.get("/compare?config=metax:2x8&config=nvidia:2x8:amp")
    assert bad.status_code == 400 and "is not VENDOR:TOPOLOGY:PRECISION" in bad.text


def test_scaling_page_efficiency(client: TestClient, web_store_url: str) -> None:
    page = client.get("/scaling?vendor=nvidia&precision=amp")
    assert page.status_code == 200
    rows = {}
    for topology in ("1x1", "2x8"):
        values = [
            float(p)
            for (p,) in _stored(
                web_store_url,
                "p_core",
                # One series per fix_hp, as report groups: the recorded 1x1 (lr=0.16, one
                # epoch) is another line, not averaged into this one's baseline.
                where=f"vendor='nvidia' AND topology='{topology}' AND status='succeeded' "
                "AND fix_hp='bs=16, lr=0.08, epochs=2'",
            )
        ]
        rows[topology] = sum(values) / len(values)
    efficiency = rows["2x8"] / (rows["1x1"] * 16) * 100
    table = page.text.split('id="scaling-table"', 1)[1]
    line = table.split("<td>2x8</td>", 1)[1].split("</tr>", 1)[0]
    assert f">{efficiency:.0f}<" in line
    assert 'id="scaling-chart"' in page.text and 'id="vendors-chart"' in page.text


def test_history_flags_the_regression(client: TestClient) -> None:
    listing = client.get("/history")
    assert listing.status_code == 200 and "MXC500 2x8" in listing.text
    query = (
        "vendor=metax&config=MXC500+2x8&precision=fp32&fix_hp=bs%3D16%2C+lr%3D0.08%2C+epochs%3D2"
    )
    page = client.get(f"/history?{query}")
    assert page.status_code == 200
    assert "7 succeeded runs" in page.text and "1 flagged" in page.text
    assert _flagged(page.text) == [REGRESSED_RUN]


def _history_page_runs(html: str) -> list[str]:
    table = html.split('id="history-runs"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<td><a href="/runs/([^"]+)"', table)


def _history_chart_points(html: str) -> int:
    found = re.search(r'<script type="application/json" id="history-chart">(.*?)</script>', html)
    assert found, html[:2000]
    return len(json.loads(found.group(1))["datasets"][0]["data"])


def test_history_shows_the_newest_runs_flagged_as_over_the_whole_history(
    client: TestClient, web_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configuration of 7 runs, 3 shown at a time: the newest 3 on the chart and in the
    table, the total said, the flags those of the whole history (the regressed run is the
    newest: among 3 shown runs alone it has 2 before it, too few for a verdict); with `since`,
    every run from then on."""
    from orchestrator.web import pages_reports

    monkeypatch.setattr(pages_reports, "HISTORY_PAGE_RUNS", 3)
    key = ConfigKey("metax", "MXC500 2x8", "fp32", "bs=16, lr=0.08, epochs=2")
    with open_store(web_store_url) as store, store.reading() as conn:
        every = configuration_history(conn, key)
    ids = [str(r["run_id"]) for r in every]
    whole = flag_history(every)
    assert len(ids) == 7 and ids[-1] == REGRESSED_RUN and list(whole) == [REGRESSED_RUN]
    query = urlencode({"vendor": key.vendor, "config": key.config, "precision": key.precision})
    query += "&" + urlencode({"fix_hp": key.fix_hp})
    page = client.get(f"/history?{query}").text
    assert _history_page_runs(page) == ids[::-1][:3]
    assert _history_chart_points(page) == 3
    count = page.split('id="history-count">', 1)[1].split("</p>", 1)[0]
    assert count.startswith("7 succeeded runs in all; shown here: the newest 3, finished from ")
    assert "1 flagged among the 3 shown" in count
    assert _flagged(page) == [REGRESSED_RUN]
    assert "No change point among the newest 3 runs shown; their mean: " in page
    since = every[2]["finished_at"].strftime("%Y-%m-%d")  # a day of its own in the fixtures
    window = client.get(f"/history?{query}&since={since}").text
    assert _history_page_runs(window) == ids[::-1][:5]
    assert _history_chart_points(window) == 5
    assert f"5 succeeded runs finished from {since}; " in window and "in all" not in window
    assert _flagged(window) == [REGRESSED_RUN]


def _flagged(html: str) -> list[str]:
    return re.findall(r'<tr class="flagged">\s*<td><a href="/runs/([^"]+)"', html)


def test_queue_and_campaign(client: TestClient) -> None:
    page = client.get("/queue")
    assert page.status_code == 200
    running = page.text.split('id="running"', 1)[1].split("</table>", 1)[0]
    assert RUNNING_RUN in running and "me-node1" in running and "me-node2" in running
    assert "worker-a:4242" in running
    assert QUEUED_RUN in page.text.split('id="queued"', 1)[1].split("</table>", 1)[0]
    part = client.get("/queue?part=1")
    assert part.status_code == 200 and "<html" not in part.text and RUNNING_RUN in part.text
    campaign = client.get(f"/campaigns/{CAMPAIGN_ID}")
    assert campaign.status_code == 200
    assert "succeeded: 6 runs" in campaign.text and "queued: 1 run " in campaign.text
    assert client.get("/campaigns/nope").status_code == 404
    assert 'href="/campaigns">all campaigns</a>' in campaign.text


def test_campaigns_page_lists_every_campaign_with_its_counts_per_status(
    client: TestClient,
) -> None:
    page = client.get("/campaigns")
    assert page.status_code == 200
    table = page.text.split('id="campaigns"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    row = next(r for r in rows if CAMPAIGN_ID in r)
    assert f'href="/campaigns/{CAMPAIGN_ID}"' in row
    counts = re.findall(r'<td class="num">(\d+)</td>', row)
    # succeeded, failed, lost, cancelled, running, queued: as the campaign's page counts them
    assert counts == ["6", "0", "0", "0", "0", "1"]


def test_runs_table_numbers_and_mem_are_formatted_as_the_cli_does(
    client: TestClient, web_store_url: str
) -> None:
    from orchestrator import units

    stored = _stored(
        web_store_url,
        "run_id, e2e_time_s, p_whole, p_core, map, mem_label, mem_source, source",
    )
    page = client.get("/runs?per_page=100").text
    checked = 0
    for run_id, e2e, p_whole, p_core, mean_ap, mem, mem_source, source in stored:
        row = page.split(f'<tr data-run="{run_id}">', 1)[1].split("</tr>", 1)[0]
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        # compare, run, status, config, precision, e2e, p_whole, p_train, p_core, mAP, ...
        assert cells[5] == units.metric("e2e_time", e2e)
        assert cells[6] == units.metric("p_whole", p_whole)
        assert cells[8] == units.metric("p_core", p_core)
        assert cells[9] == units.map3(mean_ap)
        assert cells[12] == units.mem_cell(mem, units.measured_here(p_core, source), mem_source)
        checked += mean_ap is not None
    assert checked >= 10


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_only_get(client: TestClient, method: str) -> None:
    response = client.request(method, "/runs")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_security_headers_and_server_timing(client: TestClient) -> None:
    response = client.get("/runs")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert re.fullmatch(r"app;dur=\d+\.\d\d", response.headers["server-timing"])
    chart = client.get("/static/vendor/chart.umd.min.js")
    assert chart.status_code == 200 and "Chart.js v4" in chart.text[:200]


def test_token_is_required_on_every_request(web_store_url: str) -> None:
    from orchestrator.web.app import create_app

    with TestClient(create_app(web_store_url, token=TOKEN)) as c:
        for path in ("/runs", "/static/app.js", "/queue?part=1"):
            assert c.get(path).status_code == 401, path
        assert (
            c.get("/runs", headers={"Authorization": "Bearer wrong-token-0000000"}).status_code
            == 401
        )
        assert c.get("/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        link = c.get(f"/runs?vendor=metax&token={TOKEN}", follow_redirects=False)
        assert link.status_code == 303
        assert link.headers["location"] == "/runs?vendor=metax"  # the token leaves the URL
        assert "httponly" in link.headers["set-cookie"].lower()
        assert c.get("/runs?vendor=metax").status_code == 200  # the cookie now
        elsewhere = c.get(
            f"http://testserver//evil.example/x?token={TOKEN}", follow_redirects=False
        )
        assert elsewhere.headers["location"] == "/evil.example/x"  # never to another site
        assert c.post("/runs").status_code == 405


def test_errors_show_no_stack_trace(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.web import pages_runs

    def broken(*_args: object) -> None:
        raise RuntimeError("secret internals in /srv/code.py")

    monkeypatch.setattr(pages_runs, "runs_page", broken)
    response = client.get("/runs")
    assert response.status_code == 500
    assert "internal error" in response.text
    assert "Traceback" not in response.text and "secret internals" not in response.text


def test_the_connection_cannot_write(client: TestClient) -> None:
    engine = client.app.state.web.engine  # type: ignore[attr-defined]
    with pytest.raises(Exception) as refused, engine.connect() as conn:
        conn.execute(text("DELETE FROM runs"))
        conn.commit()
    assert re.search(r"read-only|readonly|not authorized|authoriz", str(refused.value), re.I)
