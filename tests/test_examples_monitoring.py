"""examples/monitoring: Prometheus config and alert rules are valid, their metric names are real.

* ``promtool check config`` / ``check rules`` / ``test rules`` on the example files (promtool is
  Debian's prometheus package; CI installs it, so the skip only happens on a bare dev machine).
* Every ``cluster_*`` metric name used by alerts.yml and grafana-dashboard.json is present in the
  /metrics output of a real monitor that follows a real coordinator with a real worker, after a
  real client ran a few tasks through it.
* watch.py --once prints that cluster's workers, and exits 1 with a clear line with no monitor.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "examples" / "monitoring"
METRIC_RE = re.compile(r"\bcluster_[a-z0-9_]+\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return subprocess.run(
        [path, *args], capture_output=True, text=True, cwd=MONITORING, timeout=120
    )


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_the_required_conditions() -> None:
    text = (MONITORING / "alerts.yml").read_text()
    for alert in ("ClusterWorkerDead", "ClusterFailureDetectionSlow", "ClusterTaskFailureRateHigh"):
        assert f"alert: {alert}" in text


def used_metric_names() -> dict[str, set[str]]:
    alerts = set(METRIC_RE.findall((MONITORING / "alerts.yml").read_text()))
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    grafana = {name for expr in exprs for name in METRIC_RE.findall(expr)}
    return {"alerts.yml": alerts, "grafana-dashboard.json": grafana}


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def wait_for_json(url: str, check: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            last = json.loads(http_get(url))
            if check(last):
                return last
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never satisfied the check; last answer: {last}")


@pytest.fixture
def live_cluster(monitored_cluster: Any) -> Any:
    """A coordinator, one worker and a monitor on free ports (tests/conftest.py)."""
    return monitored_cluster(["watch-w1"], worker_args=["--capacity", "4"])


def test_every_metric_used_exists_in_the_monitor_output(live_cluster: Any) -> None:
    live_cluster.submit("--count", "20", "--kind", "echo")
    url = live_cluster.base
    wait_for_json(f"{url}/api/cluster", lambda body: body["totals"]["done"] >= 20)
    exposed = http_get(f"{url}/metrics")
    names = set(re.findall(r"^(cluster_[a-z0-9_]+)", exposed, re.MULTILINE))
    names |= set(re.findall(r"^# TYPE (cluster_[a-z0-9_]+)", exposed, re.MULTILINE))
    for source, used in used_metric_names().items():
        assert used, f"{source} uses no cluster_* metric"
        missing = sorted(used - names)
        assert not missing, f"{source} uses metrics the monitor does not expose: {missing}"


def test_watch_once_prints_the_workers(live_cluster: Any, run: Any) -> None:
    result = run("examples/monitoring/watch.py", "--once", "--url", live_cluster.base, timeout=30)
    assert result.returncode == 0, result.stderr
    assert re.search(r"watch-w1\s+alive", result.stdout), result.stdout
    assert "coordinator" in result.stdout and "tasks: submitted" in result.stdout


def test_watch_once_without_monitor_exits_1(run: Any, port: int) -> None:
    result = run("examples/monitoring/watch.py", "--once", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_watch_rejects_bad_arguments(run: Any) -> None:
    result = run("examples/monitoring/watch.py", "--interval", "0")
    assert result.returncode == 2 and "usage" in result.stderr


def test_watch_once_with_no_workers_yet(spawn: Any, free_port: Any, run: Any) -> None:
    status, http = free_port(), free_port()
    monitor = spawn(
        "02-cluster-patterns/monitor.py", "--status-port", str(status), "--port", str(http)
    )
    monitor.wait_for("ready")
    result = run("examples/monitoring/watch.py", "--once", "--url", f"http://127.0.0.1:{http}")
    assert result.returncode == 0, result.stderr
    assert "(no workers registered)" in result.stdout and "NOT SEEN" in result.stdout
