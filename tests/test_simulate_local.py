"""docker/simulate-cluster.sh --local: the same user story as the Docker test, as processes.

Every node is a local process with pid and log files under a temporary state directory;
ports are free ones picked here, so a user's cluster on 5570-5572 is untouched. As root the
workers live in network namespaces and partition/heal cut and restore their veth links;
without root, partition must refuse with a clear message and exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_patterns.defaults import HEARTBEAT_INTERVAL_S, LIVENESS

REPO = Path(__file__).resolve().parent.parent
SIM = REPO / "docker" / "simulate-cluster.sh"
# ADR 2's one rule: the dead point (interval x liveness) plus one interval of slack, from the
# fault to "dead" in the monitor: 2.0 s with the defaults the simulator starts the cluster with.
DETECTION_BOUND_S = HEARTBEAT_INTERVAL_S * (LIVENESS + 1)
IS_ROOT = os.geteuid() == 0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def namespaces(sim: Any) -> list[str]:
    """The network namespaces the local backend made for this project."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    tag = hashlib.md5(sim.project.encode()).hexdigest()[:6]
    return [line for line in listing.splitlines() if line.startswith(f"zsim-{tag}-")]


@pytest.fixture
def sim(tmp_path: Path, free_port: Any, cluster_simulator: Any) -> Iterator[Any]:
    ports = [free_port(), free_port(), free_port()]
    while len(set(ports)) < 3:
        ports = [free_port(), free_port(), free_port()]
    state_dir = tmp_path / "state"
    simulator = cluster_simulator(
        "local",
        f"zsimlocal{uuid.uuid4().hex[:8]}",
        ports[2],
        {
            "COORDINATOR_PORT": str(ports[0]),
            "STATUS_PORT": str(ports[1]),
            "CLUSTER_STATE_DIR": str(state_dir),
        },
    )
    yield simulator
    simulator("cleanup", timeout=120)


def test_local_cluster_user_story(sim: Any, tmp_path: Path) -> None:
    sim.ok("build")
    out = sim.ok("start")
    assert "cluster ready: 3 workers alive" in out

    status = sim.ok("status")
    for node in ("coordinator", "worker1", "worker2", "worker3", "monitor"):
        assert re.search(rf"^{node}\s+running\s+pid \d+", status, re.M), status

    if not IS_ROOT:
        refused = sim("partition", "worker2")
        assert refused.returncode == 2 and "network namespaces" in refused.stderr
        pytest.skip("partition/heal with the local backend need root (network namespaces)")

    figures = tmp_path / "figures.json"
    out = sim.ok("test", "--json", str(figures), timeout=500)
    print(out)  # the figures table, for the log
    report = json.loads(figures.read_text())
    assert report["violations"] == []
    steps = {step["step"]: step for step in report["steps"]}
    assert sum(step["summary"]["submitted"] for step in steps.values()) >= 200
    assert 0 < steps["fail worker1"]["figure_s"] <= DETECTION_BOUND_S

    out = sim.ok("fail", "worker1")
    verdict = re.search(r"worker1 dead after ([\d.]+) s", out)
    assert verdict and float(verdict.group(1)) <= DETECTION_BOUND_S, out
    sim.ok("recover", "worker1")
    assert sim.node_state("worker1") == "alive"

    sim.ok("partition", "worker2")
    assert sim.node_state("worker2") == "dead"
    sim.ok("heal", "worker2")
    assert sim.node_state("worker2") == "alive"

    slow = sim("slow", "worker3", "100")
    # Some kernels (this project's CI VM) ship no sch_netem: then `slow` must say so, exit 2.
    assert slow.returncode == 0 or (slow.returncode == 2 and "no netem" in slow.stderr), slow
    sim.ok("flaky", "worker3", "5")
    sim.ok("fast", "worker3")
    sim.ok("pause", "worker3")
    assert re.search(r"^worker3\s+paused", sim.ok("status"), re.M)
    sim.ok("resume", "worker3")

    bad = sim("fail", "worker7")
    assert bad.returncode == 2
    assert "valid nodes: coordinator worker1 worker2 worker3 monitor" in bad.stderr

    assert "ready" in sim.ok("logs", "monitor")
    sim.ok("stop")
    assert sim("status").returncode == 2
    assert namespaces(sim) == []
    sim.ok("cleanup")
    assert not (Path(sim.env["CLUSTER_STATE_DIR"]) / f"local-{sim.project}").exists()
