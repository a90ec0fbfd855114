"""The results pages in a real browser: Debian's headless Chromium driven by Playwright, against
`orchestrator serve` running as a lab runs it, over a store that `orchestrator ingest` filled
with recorded runs. Each page loads without a console error and draws its charts with data
points; filtering, sorting, paging and the compare selection work by clicking; the queue page
refreshes itself. Screenshots go to test-artifacts/screenshots/ (or $ORCHESTRATOR_TEST_ARTIFACTS).

One browser and one server for the whole module, to keep the run short.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.support.web_fixtures import (
    CAMPAIGN_ID,
    MONITORED_RUN,
    REGRESSED_RUN,
    REPO,
    XSS,
    XSS_RUN,
)

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(os.environ.get("ORCHESTRATOR_TEST_ARTIFACTS", REPO / "test-artifacts")) / "screenshots"
HISTORY = "/history?vendor=metax&config=MXC500+2x8&precision=fp32&fix_hp=bs%3D16%2C+lr%3D0.08%2C+epochs%3D2"
# Path -> how many charts the page draws.
PAGES = {
    "/runs": 0,
    f"/runs/{MONITORED_RUN}": 10,  # 4 per-epoch + 6 monitor metrics
    "/runs/20260115-131500-2x8-metax-failed": 0,
    "/seed?vendor=metax": 0,
    "/compare?run=20260114-101500-2x8-metax&run=20260118-101500-2x8-metax": 4,
    "/scaling": 2,
    HISTORY: 1,
    "/queue": 0,
    "/campaigns": 0,
    f"/campaigns/{CAMPAIGN_ID}": 0,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(sqlite_web_store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "--db",
                sqlite_web_store,
                "serve",
                "--port",
                str(port),
                "--refresh",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path_factory.mktemp("serve-cwd"),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install chromium: scripts/install-system-packages.sh"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


class Tab:
    """A page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, base: str) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.base = base
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))

    def open(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        self.page.wait_for_load_state("networkidle")
        return response

    def chart_points(self) -> list[int]:
        return self.page.evaluate(
            "() => (window.orchestratorCharts || []).map(c => c.data.datasets"
            ".reduce((n, d) => n + d.data.filter(v => v !== null).length, 0))"
        )

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def tab(browser: Any, server: str) -> Iterator[Tab]:
    opened = Tab(browser, server)
    yield opened
    opened.page.close()


@pytest.mark.parametrize("path", list(PAGES))
def test_page_loads_and_draws_its_charts(tab: Tab, path: str) -> None:
    response = tab.open(path)
    assert response.status == 200
    points = tab.chart_points()
    assert len(points) == PAGES[path]
    assert all(n > 0 for n in points), points
    canvases = tab.page.locator("canvas[data-chart]")
    assert canvases.count() == PAGES[path]
    for i in range(canvases.count()):  # drawn: the canvas has a size and is not blank
        box = canvases.nth(i).bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100
    tab.shot(path.strip("/").split("?")[0].replace("/", "_") or "home")
    assert tab.errors == []


def test_filter_sort_and_page_by_clicking(tab: Tab) -> None:
    tab.open("/runs")
    tab.page.select_option("select[name=vendor]", "nvidia")
    tab.page.click("#filter-button")
    tab.page.wait_for_url("**/runs?*vendor=nvidia*")
    rows = tab.page.locator("tr[data-run]")
    assert rows.count() == 8
    assert all("nvidia" in (rows.nth(i).get_attribute("data-run") or "") for i in range(8))
    tab.page.click("thead >> text=p_core (img/s)")
    tab.page.wait_for_url("**sort=p_core*")
    values = [
        float(v.replace(",", ""))
        for v in tab.page.locator("tr[data-run] td:nth-child(9)").all_inner_texts()
        if v
    ]
    assert values == sorted(values, reverse=True) and len(values) == 7
    tab.page.goto(tab.base + "/runs?per_page=10")
    tab.page.click("a[rel=next] >> nth=0")
    tab.page.wait_for_url("**page=2*")
    assert tab.page.locator("tr[data-run]").count() == 10
    assert "page 2 of 3" in tab.page.inner_text(".pager >> nth=0")
    tab.shot("runs-filtered")
    assert tab.errors == []


def test_compare_selection_by_clicking(tab: Tab) -> None:
    tab.open("/runs?vendor=metax&topology=2x8&status=succeeded")
    first, second = "20260114-101500-2x8-metax", REGRESSED_RUN
    tab.page.check(f"input[value='{first}']")
    tab.page.check(f"input[value='{second}']")
    tab.page.click("#compare-button")
    tab.page.wait_for_url("**/compare?*")
    tab.page.wait_for_load_state("networkidle")
    header = tab.page.inner_text("#compare-metrics thead")
    assert second in header and first in header
    p_core = tab.page.inner_text("#compare-metrics tbody tr:nth-child(4)")
    assert p_core.startswith("p_core (img/s)") and "-21." in p_core  # 410 against 519 img/s
    assert tab.chart_points() and all(n == 4 for n in tab.chart_points())  # 2 runs x 2 epochs
    tab.shot("compare-clicked")
    # The seed-table button takes the same selection.
    tab.page.go_back()
    tab.page.click("#seed-button")
    tab.page.wait_for_url("**/seed?*")
    assert tab.page.locator("#seed-table tbody tr").count() == 1  # one configuration
    assert tab.errors == []


def test_markup_in_the_store_is_shown_as_text(tab: Tab) -> None:
    tab.open(f"/runs/{XSS_RUN}")
    assert XSS in tab.page.inner_text("#failure")
    assert XSS in tab.page.inner_text("#log-tail")
    assert (
        tab.page.evaluate("() => document.querySelectorAll('main script:not([type])').length") == 0
    )
    assert tab.errors == []  # no dialog opened


def test_queue_page_refreshes_itself(tab: Tab, sqlite_web_store: str) -> None:
    from orchestrator.store import open_store
    from tests.fixtures.make_runs import _manifest

    tab.open("/queue")
    new_run = "20260202-090000-1x8-metax-live"
    assert new_run not in tab.page.inner_text("#running")
    now = datetime.now(timezone.utc)
    manifest = _manifest(
        new_run, "metax", "MXC500", (1, 8), "running", now - timedelta(minutes=1), 0, {}
    )
    with open_store(sqlite_web_store) as store:
        store.create_run(replace(manifest, finished_at=None), status="running")
    tab.page.wait_for_function(
        f"() => document.querySelector('#running').innerText.includes('{new_run}')", timeout=10_000
    )
    tab.shot("queue-live")
    assert tab.errors == []


def test_runs_table_fits_a_1280_px_screen(tab: Tab) -> None:
    tab.page.set_viewport_size({"width": 1280, "height": 800})
    tab.open("/runs")
    widths = tab.page.evaluate(
        "() => [document.documentElement.scrollWidth, "
        "document.querySelector('#runs-table').getBoundingClientRect().right]"
    )
    tab.shot("runs_1280")
    assert widths[0] <= 1280 and widths[1] <= 1280, widths
    headers = tab.page.locator("#runs-table thead th")
    last = headers.nth(headers.count() - 1).bounding_box()
    fix_hp = tab.page.locator("#runs-table thead th", has_text="fix_hp").bounding_box()
    assert fix_hp is not None and last is not None
    assert fix_hp["x"] + fix_hp["width"] <= 1280 and last["x"] + last["width"] <= 1280
    assert tab.errors == []
