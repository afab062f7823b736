"""docker/simulate-cluster.sh against the real Docker engine, driven exactly as a user would.

One test walks the whole user story in order, so the image is built once: build, start,
status, compare (performance_comparison.py, agent vs sshd), test, fail/recover worker1,
partition/heal worker2, slow/flaky/fast/pause/resume, logs monitor, stop, cleanup; then
nothing of the project is left in `docker ps -a`, `docker network ls`, `docker volume ls` or
`docker images`.
It uses its own Compose project name, state directory and a free monitor port, so a user's
cluster on 5572 is untouched.
The story runs once with each Compose version (`docker-compose` 1.29 and `docker compose` v2),
both through the same commands; the slow image layers are built once per session
(``node_image_layers``), so the second run costs its scenario, not a rebuild.
Skips (with the reason) only when no Docker engine answers, or when one Compose version is not
installed (CI installs both, and forbids skips).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_patterns.defaults import HEARTBEAT_INTERVAL_S, LIVENESS
from conftest import compose_problem, docker_engine_problem

REPO = Path(__file__).resolve().parent.parent
SIM = REPO / "docker" / "simulate-cluster.sh"
# ADR 2's one rule: the dead point (interval x liveness) plus one interval of slack, from the
# fault to "dead" in the monitor: 2.0 s with the defaults the simulator starts the cluster with.
DETECTION_BOUND_S = HEARTBEAT_INTERVAL_S * (LIVENESS + 1)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]


def leftovers(sim: Any) -> str:
    label = f"label=com.docker.compose.project={sim.project}"
    containers = subprocess.run(
        ["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True
    ).stdout
    networks = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", label], capture_output=True, text=True
    ).stdout
    volumes = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", label], capture_output=True, text=True
    ).stdout
    images = subprocess.run(
        ["docker", "images", "-q", "--filter", f"label=com.zmqsim.project={sim.project}"],
        capture_output=True,
        text=True,
    ).stdout
    return (containers + networks + volumes + images).strip()


@pytest.fixture(params=["v1", "v2"])
def sim(
    request: pytest.FixtureRequest,
    new_simulator: Any,
    node_image_layers: None,
) -> Iterator[Any]:
    problem = docker_engine_problem() or compose_problem(request.param)
    if problem:
        pytest.skip(f"Docker scenario with Compose {request.param}: {problem}")
    simulator = new_simulator("docker", "zsimtest", compose=request.param)
    yield simulator
    simulator("cleanup", timeout=180)


def seconds_in(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match.group(1))


def output_of(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def assert_curve_on(sim: Any, status: str) -> None:
    """CURVE on 5570/5571 by default: keys made once into the project's volume, secrets 0600,
    and none of them in the image."""
    assert "CURVE on 5570/5571" in status, status
    assert "(CURVE, 1 authorized key(s))" in sim.ok("logs", "coordinator")
    project = f"label=com.docker.compose.project={sim.project}"
    service = "label=com.docker.compose.service=coordinator"
    coordinator = output_of("docker", "ps", "-q", "--filter", project, "--filter", service)
    secrets = [f"/keys/coordinator/{name}.key_secret" for name in ("client", "coordinator")]
    modes = output_of("docker", "exec", coordinator.strip(), "stat", "-c", "%a", *secrets)
    assert modes.split() == ["600", "600"], modes
    image = f"{sim.project}-node:latest"
    baked = output_of("docker", "run", "--rm", "--entrypoint", "ls", image, "-A", "/keys")
    assert baked.strip() == "", f"keys baked into the image: {baked}"


def test_docker_cluster_user_story(sim: Any, tmp_path: Path) -> None:
    sim.ok("build", timeout=600)

    out = sim.ok("start")
    assert "cluster ready: 3 workers alive" in out
    assert f"http://127.0.0.1:{sim.monitor_port}/" in out

    status = sim.ok("status")
    assert f"Compose {sim.env['COMPOSE']}" in status, status
    for node in ("coordinator", "worker1", "worker2", "worker3", "monitor"):
        assert re.search(rf"^{node}\s+running\s+healthy", status, re.M), status
    assert re.search(r"^worker1\s.*\balive$", status, re.M), status
    assert_curve_on(sim, status)

    # Each worker container also runs the 03 ZeroMQ node agent and an sshd, so the real
    # performance_comparison.py --descriptor measures both across containers (--smoke: ~10 s).
    out = sim.ok("compare", "--smoke")
    assert "measuring docker-simulation: worker1, worker2, worker3" in out, out
    for executor in ("zmq", "asyncssh", "ssh_mux", "ssh_fresh", "local"):
        assert re.search(rf"^\| {executor} \| [\d.]+ \|", out, re.M), out
    assert "fan-out 3 nodes ms" in out, out

    out, steps = sim.scenario_steps(tmp_path / "figures.json", timeout=600)
    assert sum(step["summary"]["submitted"] for step in steps.values()) >= 200
    assert 0 < steps["fail worker1"]["figure_s"] <= DETECTION_BOUND_S
    assert steps["heal worker2"]["figure_s"] > 0
    assert "partition recovery" in out and "all invariants hold" in out

    out = sim.ok("fail", "worker1")
    assert seconds_in(r"worker1 dead after ([\d.]+) s", out) <= DETECTION_BOUND_S
    assert sim.node_state("worker1") == "dead"

    sim.ok("recover", "worker1")
    assert sim.node_state("worker1") == "alive"

    sim.ok("partition", "worker2")
    assert sim.node_state("worker2") == "dead"
    assert "partitioned" in sim.ok("status")
    sim.ok("heal", "worker2")
    assert sim.node_state("worker2") == "alive"

    # Blockade's vocabulary on the running containers: tc netem needs iproute2 + NET_ADMIN.
    sim.shape_then_pause("worker3", flaky_percent="10")
    sim.ok("resume", "worker3")
    sim.assert_refuses_unknown_node("worker9")

    assert "ready" in sim.ok("logs", "monitor")

    sim.ok("stop")
    assert sim("status").returncode == 2  # stopped = no cluster any more
    sim.ok("cleanup")
    assert leftovers(sim) == "", "cleanup left containers, networks, volumes or images behind"
    base = subprocess.run(["docker", "image", "inspect", "python:3.11-slim"], capture_output=True)
    assert base.returncode == 0, "cleanup must keep the python:3.11-slim base image"
