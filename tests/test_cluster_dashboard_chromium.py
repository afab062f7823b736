"""Invariant 6: the dashboard in headless Chromium, against a real cluster.

Debian's /usr/bin/chromium driven by Playwright (never a downloaded browser). The page
must list every worker with its state, and show a SIGKILLed worker dead without a reload.
It must fetch nothing but the monitor's own URLs (it has to work offline).

Set DASHBOARD_SCREENSHOT=/some/path.png to keep a screenshot of the final page.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable
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
INTERVAL_S = 0.5
LIVENESS = 3
DEAD_WITHIN_S = INTERVAL_S * (LIVENESS + 1)
PAGE_MARGIN_S = 1.5  # the page polls every 500 ms; Chromium on a busy 2-core machine
WORKERS = ("w1", "w2", "w3")


def node_states(base: str) -> dict[str, str]:
    with urllib.request.urlopen(base + "/api/cluster", timeout=5) as response:
        return {n["id"]: n["state"] for n in json.loads(response.read())["nodes"]}


def start_cluster(spawn: Any, free_port: Callable[[], int]) -> tuple[str, dict[str, Any]]:
    """Coordinator, 3 workers, monitor; returns the monitor's URL and the processes."""
    port, status_port, http_port = free_port(), free_port(), free_port()
    timing = ["--heartbeat-interval", str(INTERVAL_S), "--liveness", str(LIVENESS)]
    coordinator = spawn(
        "02-cluster-patterns/coordinator.py",
        "--port",
        str(port),
        "--status-port",
        str(status_port),
        *timing,
    )
    coordinator.wait_for("coordinator ready")
    workers = {
        name: spawn("02-cluster-patterns/worker.py", "--id", name, "--port", str(port), *timing)
        for name in WORKERS
    }
    spawn(
        "02-cluster-patterns/monitor.py",
        "--status-port",
        str(status_port),
        "--port",
        str(http_port),
    ).wait_for("monitor ready")
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 20
    while node_states(base) != {name: "alive" for name in WORKERS}:
        assert time.monotonic() < deadline, f"workers not all alive: {node_states(base)}"
        time.sleep(0.1)
    return base, {"port": str(port), "coordinator": coordinator, **workers}


def test_dashboard_shows_workers_and_a_kill_without_reload(
    spawn: Any, free_port: Callable[[], int], run: Any, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package 'chromium')")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (requirements-dev.txt)")

    base, procs = start_cluster(spawn, free_port)
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
            client = run(
                "02-cluster-patterns/client.py",
                "--count",
                "300",
                "--kind",
                "sleep",
                "--ms",
                "2",
                "--port",
                procs["port"],
                timeout=60,
            )
            assert client.returncode == 0, client.stdout + client.stderr

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
