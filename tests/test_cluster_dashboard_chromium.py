"""Invariant 6: the dashboard in headless Chromium, against a real cluster.

Debian's /usr/bin/chromium driven by Playwright (never a downloaded browser). The page
must list every worker with its state, and show a SIGKILLed worker dead without a reload.
It must fetch nothing but the monitor's own URLs (it has to work offline).

Set DASHBOARD_SCREENSHOT=/some/path.png to keep a screenshot of the final page.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INTERVAL_S = 0.5  # as tests/conftest.py starts the cluster
LIVENESS = 3
DEAD_WITHIN_S = INTERVAL_S * (LIVENESS + 1)
PAGE_MARGIN_S = 1.5  # the page polls every 500 ms; Chromium on a busy 2-core machine
WORKERS = ("w1", "w2", "w3")


def test_dashboard_shows_workers_and_a_kill_without_reload(
    monitored_cluster: Any, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package 'chromium')")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (requirements-dev.txt)")

    cluster = monitored_cluster(WORKERS)
    base, procs = cluster.base, cluster.procs
    requested: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda req: requested.append(req.url))
            page.goto(base + "/")
            page.evaluate("window.__sameDocument = true")
            for name in WORKERS:
                page.wait_for_selector(
                    f'tr[data-node="{name}"][data-state="alive"]', timeout=10_000
                )
            assert page.inner_text('tr[data-node="w1"] .state') == "alive"
            assert "coordinator" in page.inner_text("#coordinator")
            assert page.get_attribute("#coordinator", "data-seen") == "seen"

            # A little work so the charts and rates have something to draw.
            cluster.submit("--count", "300", "--kind", "sleep", "--ms", "2")

            procs["w2"].signal(signal.SIGKILL)
            killed_at = time.monotonic()
            page.wait_for_selector(
                'tr[data-node="w2"][data-state="dead"]',
                timeout=(DEAD_WITHIN_S + PAGE_MARGIN_S + 5) * 1000,
            )
            took = time.monotonic() - killed_at
            assert took <= DEAD_WITHIN_S + PAGE_MARGIN_S, f"page showed dead after {took:.2f} s"
            assert page.evaluate("window.__sameDocument") is True  # no reload happened
            assert page.inner_text('tr[data-node="w2"] .state') == "dead"
            assert page.get_attribute('tr[data-node="w1"]', "data-state") == "alive"
            page.wait_for_function(
                "document.querySelector('#detect-count').textContent !== '0'", timeout=10_000
            )
            page.wait_for_selector("#latency-chart path.p50", state="attached", timeout=10_000)
            shot = Path(os.environ.get("DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # The coordinator dies: the page says so, still without a reload.
            procs["coordinator"].signal(signal.SIGKILL)
            page.wait_for_selector(
                '#coordinator[data-seen="lost"]', timeout=(DEAD_WITHIN_S + 5) * 1000
            )
            assert "LOST" in page.inner_text("#coordinator")
            assert page.evaluate("window.__sameDocument") is True
        finally:
            browser.close()
    outside = [url for url in requested if not url.startswith(base + "/")]
    assert not outside, f"the dashboard fetched outside the monitor: {outside}"
