"""End to end: a real coordinator, 3 real workers and the monitor, on free loopback ports.

Invariants 2 and 3 as the monitor sees them:
  * every worker is listed alive; after SIGKILL of one, /api/cluster shows it dead within
    interval * (liveness + 1) (plus a small margin for our own polling) and the failure
    detection count rises;
  * SIGSTOP of another past the dead timeout, then SIGCONT: it is dead, then alive again,
    and partition_recovery.last_s is reported (also as a histogram in /metrics).
"""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

INTERVAL_S = 0.5  # as tests/conftest.py starts the cluster: a dead verdict within 2 s
LIVENESS = 3
DEAD_WITHIN_S = INTERVAL_S * (LIVENESS + 1)
POLL_S = 0.05
POLL_MARGIN_S = 0.5  # our HTTP polling and a busy 2-core machine
WORKERS = ("w1", "w2", "w3")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check` every POLL_S; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_monitor_sees_kill_and_partition(monitored_cluster: Any) -> None:
    cluster = monitored_cluster(WORKERS)
    base, procs, api, states = cluster.base, cluster.procs, cluster.api, cluster.states
    with urllib.request.urlopen(base + "/health", timeout=5) as response:
        assert response.status == 200

    # Some work, so totals and the latency histogram carry real numbers.
    cluster.submit("--count", "200", "--kind", "echo")
    wait_until(lambda: api()["totals"]["done"] >= 200, 10, "done >= 200 in /api/cluster")
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert "cluster_task_latency_seconds_count" in metrics
    latency_count = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("cluster_task_latency_seconds_count")
    ]
    assert latency_count and latency_count[0] >= 200

    # SIGKILL w2: dead within interval * (liveness + 1).
    before = api()["failure_detection"]["count"]
    procs["w2"].signal(signal.SIGKILL)
    took = wait_until(
        lambda: states().get("w2") == "dead", DEAD_WITHIN_S + 5, "w2 dead after SIGKILL"
    )
    assert took <= DEAD_WITHIN_S + POLL_MARGIN_S, f"w2 shown dead after {took:.2f} s"
    doc = api()
    assert doc["failure_detection"]["count"] > before
    assert 0 < doc["failure_detection"]["last_s"] <= DEAD_WITHIN_S
    assert states()["w1"] == "alive"

    # SIGSTOP w3 past the dead timeout, then SIGCONT: alive again, recovery time reported.
    procs["w3"].signal(signal.SIGSTOP)
    try:
        wait_until(lambda: states().get("w3") == "dead", DEAD_WITHIN_S + 5, "w3 dead")
        time.sleep(INTERVAL_S)
    finally:
        procs["w3"].signal(signal.SIGCONT)
    wait_until(lambda: states().get("w3") == "alive", 15, "w3 alive after SIGCONT")
    recovery = api()["partition_recovery"]
    assert recovery["count"] >= 1 and recovery["last_s"] > INTERVAL_S
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert "cluster_partition_recovery_seconds_count 1.0" in metrics
    assert 'cluster_node_state{node="w2",state="dead"} 1.0' in metrics
    assert 'cluster_node_state{node="w3",state="alive"} 1.0' in metrics

    # The coordinator goes away: the monitor says so with a 503.
    procs["coordinator"].signal(signal.SIGKILL)
    start = time.monotonic()

    def unhealthy() -> bool:
        try:
            urllib.request.urlopen(base + "/health", timeout=5).close()
            return False
        except urllib.error.HTTPError as err:
            return err.code == 503

    wait_until(unhealthy, DEAD_WITHIN_S + 5, "/health 503 after the coordinator died")
    assert time.monotonic() - start <= DEAD_WITHIN_S + POLL_MARGIN_S
    procs["monitor"].signal(signal.SIGTERM)
    assert procs["monitor"].wait(timeout=15) == 0
    assert "Traceback" not in procs["monitor"].output()
