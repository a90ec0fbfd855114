#!/usr/bin/env python3
"""Takes the screenshots of docs/web.md with the real browser (Debian's chromium, Playwright):
builds the browser tests' store (tests/support/web_fixtures.py) in a temporary folder, serves
it with `orchestrator serve` and saves docs/images/web-*.png.

    .venv/bin/python scripts/web_screenshots.py
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.web_fixtures import CAMPAIGN_ID, MONITORED_RUN, build_web_store  # noqa: E402

OUT = ROOT / "docs" / "images"
HISTORY = "/history?vendor=metax&config=MXC500+2x8&precision=fp32&fix_hp=bs%3D16%2C+lr%3D0.08%2C+epochs%3D2"
# name -> (path, CSS selector to capture, or None for the top of the page)
SHOTS = {
    "web-runs": ("/runs?per_page=12", None),
    "web-run": (f"/runs/{MONITORED_RUN}", None),
    "web-run-monitors": (f"/runs/{MONITORED_RUN}", "h2:has-text('Monitors') + p + .charts"),
    "web-seed": ("/seed?vendor=metax", None),
    "web-compare": ("/compare?run=20260124-101500-2x8-metax&run=20260126-101500-2x8-metax", None),
    "web-scaling": ("/scaling", None),
    "web-history": (HISTORY, None),
    "web-queue": ("/queue", None),
    "web-campaign": (f"/campaigns/{CAMPAIGN_ID}", None),
}


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="web-shots-") as tmp:
        url = f"sqlite:///{tmp}/results.db"
        build_web_store(url, Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "--db", url, "serve", "--port", str(port)],
            cwd=tmp,
        )
        try:
            time.sleep(2)
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                for name, (path, selector) in SHOTS.items():
                    page.goto(f"http://127.0.0.1:{port}{path}")
                    page.wait_for_load_state("networkidle")
                    target = OUT / f"{name}.png"
                    if selector:
                        page.locator(selector).screenshot(path=str(target))
                    else:
                        page.screenshot(path=str(target))
                    print(target.relative_to(ROOT))
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
