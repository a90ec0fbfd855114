"""The history page's change-point markers in Debian's headless Chromium, on SQLite and on
PostgreSQL (as the SELECT-only role `serve` connects with): a planted 200-run history with a −6 %
step where the driver changed and +3 % where the wheels did. The chart draws one marker per change
point whose tooltip (hovered with the mouse) says what changed; the change-point table lists the
field, before and after; the level since the last change point is shown with its interval."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.history_store import plant_history
from tests.support.web_fixtures import REPO, scratch_postgres

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(os.environ.get("ORCHESTRATOR_TEST_ARTIFACTS", REPO / "test-artifacts")) / "screenshots"
PAGE = "/history?vendor=metax-c500&config=MXC500+2x8&precision=amp&fix_hp=epochs%3D2"


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def planted_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    from orchestrator.store import upgrade_store

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('hist') / 'results.db'}"
        upgrade_store(url)
        plant_history(url, runs=200, cv=0.01, seed=2)
        yield url
        return
    from tests.support.store_fixtures import pg_reader

    with scratch_postgres() as url:
        upgrade_store(url)
        plant_history(url, runs=200, cv=0.01, seed=2)
        with pg_reader(url) as reader:
            yield reader


@pytest.fixture(scope="module")
def server(planted_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "--db",
                planted_url,
                "serve",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path_factory.mktemp("serve-cwd"),
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install chromium: scripts/install-system-packages.sh"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        response = tab.goto(server + PAGE)
        tab.wait_for_load_state("networkidle")
        assert response is not None and response.status == 200
        yield tab
        assert errors == []
        browser.close()


def test_the_markers_sit_on_the_change_points_and_say_what_changed(page: Any) -> None:
    markers = page.evaluate(
        "() => window.orchestratorCharts[0].data.datasets"
        ".find(d => d.label === 'change point').data.map(p => p.note)"
    )
    assert len(markers) == 2
    assert markers[0].startswith("from hist-00080: p_core -")
    assert "driver: 2.2.0 → 2.3.1" in markers[0]
    assert markers[1].startswith("from hist-00140: p_core +")
    assert "wheels: torch-2.0.0+mc2.19-cp38.whl" in markers[1]


def test_hovering_a_marker_shows_the_change(page: Any) -> None:
    box = page.locator("canvas[data-chart='history-chart']").bounding_box()
    x, y = page.evaluate(
        "() => { const c = window.orchestratorCharts[0];"
        " const i = c.data.datasets.findIndex(d => d.label === 'change point');"
        " const p = c.getDatasetMeta(i).data[0]; return [p.x, p.y]; }"
    )
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_timeout(300)
    tooltip = page.evaluate(
        "() => window.orchestratorCharts[0].tooltip.body.map(b => [...b.lines, ...b.after]).flat()"
    )
    assert any("driver: 2.2.0 → 2.3.1" in line for line in tooltip), tooltip
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "history-change-points.png"), full_page=True)


def test_the_table_lists_each_change_point_newest_first(page: Any) -> None:
    rows = page.locator("#change-points tbody tr").all_inner_texts()
    assert len(rows) == 2
    assert rows[0].startswith("hist-00140") and "wheels: torch-2.0.0+mc2.19-cp38.whl" in rows[0]
    assert rows[1].startswith("hist-00080") and "driver: 2.2.0 → 2.3.1" in rows[1]
    assert "(first in hist-00080)" in rows[1]
    level = page.locator("#history-level").inner_text()
    assert "Since the last change point (hist-00140): 484" in level and "n 60" in level
    # the first run of a new level is marked in the runs table (the latest 100 runs: hist-00140)
    marked = page.locator("#history-runs tr.change-start").all_inner_texts()
    assert [m.split()[0] for m in marked] == ["hist-00140"]
